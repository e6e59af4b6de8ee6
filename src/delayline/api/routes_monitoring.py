"""The monitoring endpoints under ``/api/v1/schedules/monitoring``.

Stats, sync, cleanup and key rotation cover every tenant: they need the ``admin`` scope, and
the mutating ones are recorded in the audit trail. Analytics needs the ``read`` scope and
answers the caller's own tenant's figures; an admin's cover every tenant unless it names one
with ``?tenant=``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response

from delayline.api.audit_routes import AuditLog, audited
from delayline.api.auth import caller_of
from delayline.api.keys import Principal
from delayline.api.schemas import ApiError, ErrorOut, Moved, Removed, to_utc
from delayline.domain import tenancy
from delayline.domain.events import utc_now
from delayline.domain.limits import MAX_TEXT
from delayline.metrics import CONTENT_TYPE, Metrics
from delayline.ports import AnalyticsApi, Granularity, HealthCheck, KeyRotator, SchedulerApi

log = logging.getLogger(__name__)

PREFIX = "/api/v1/schedules/monitoring"
DEFAULT_WINDOW = timedelta(days=1)
MAX_WINDOW = timedelta(days=400)


def json_safe(value: Any) -> Any:
    """``value`` made JSON-ready; NaN and infinities (ClickHouse's avg of nothing) become null."""
    encoded = jsonable_encoder(value)
    return _finite(encoded)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _only(request: Request, allowed: frozenset[str]) -> None:
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        raise ApiError(
            422,
            f"unknown query parameter {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}",
            field=unknown[0],
        )


def _window(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    try:
        end_utc = to_utc(end) if end is not None else utc_now()
    except ValueError as exc:
        raise ApiError(422, f"end_date: {exc}", field="end_date") from None
    try:
        start_utc = to_utc(start) if start is not None else end_utc - DEFAULT_WINDOW
    except ValueError as exc:
        raise ApiError(422, f"start_date: {exc}", field="start_date") from None
    if start_utc >= end_utc:
        raise ApiError(422, "start_date must be before end_date", field="start_date")
    if end_utc - start_utc > MAX_WINDOW:
        raise ApiError(422, f"the range is limited to {MAX_WINDOW.days} days", field="start_date")
    return start_utc, end_utc


def _tenant_filter(caller: Principal, asked: str | None) -> str | None:
    """The tenant whose analytics ``caller`` reads: its own, or for an admin ``asked`` (None:
    every tenant). A non-admin naming another tenant is refused (403)."""
    if caller.is_admin:
        if asked is None:
            return None
        try:
            return tenancy.check_tenant(asked)
        except tenancy.TenancyError as exc:
            raise ApiError(422, f"tenant: {exc}", field="tenant") from None
    if asked is not None and asked != caller.tenant:
        raise ApiError(403, "only an admin key may read another tenant's analytics")
    return caller.tenant


_DATE_HELP = "ISO-8601 date-time (no offset means UTC)"
StartDate = Annotated[datetime | None, Query(description=f"{_DATE_HELP}; default end - 1 day")]
EndDate = Annotated[datetime | None, Query(description=f"{_DATE_HELP}; default now")]
Filter = Annotated[str | None, Query(max_length=MAX_TEXT)]
TenantFilter = Annotated[
    str | None, Query(description="Admin only: this tenant's figures (default: every tenant's)")
]
_SUMMARY_PARAMS = frozenset({"start_date", "end_date", "tenant"})
_PERF_PARAMS = _SUMMARY_PARAMS | {"entity_type", "action", "topic", "granularity"}


def monitoring_router(
    service: SchedulerApi,
    *,
    analytics: AnalyticsApi | None,
    health: HealthCheck,
    metrics: Metrics,
    reader: Callable[..., Awaitable[Principal]],
    admin: Callable[..., Awaitable[Principal]],
    open_health: bool,
    open_metrics: bool,
    rotation: KeyRotator | None = None,
    audit: AuditLog | None = None,
) -> APIRouter:
    """The monitoring routes; health and metrics need ``reader`` unless ``open_*`` is true,
    analytics ``reader``, the rest ``admin``."""
    router = APIRouter(prefix=PREFIX, tags=["monitoring"])
    errors: dict[int | str, dict[str, Any]] = {c: {"model": ErrorOut} for c in (401, 403, 422, 503)}
    auth = [Depends(admin)]

    @router.get(
        "/health",
        dependencies=[] if open_health else [Depends(reader)],
        responses={503: {"description": "Not serving"}},
        summary="Each dependency's state",
    )
    async def get_health() -> JSONResponse:
        """200 while the service can serve, 503 when it cannot."""
        try:
            report = json_safe(await health.check())
            serving = report.get("serving") is True
        except Exception as exc:  # a health probe must answer, whatever broke
            log.warning("health check failed: %s", type(exc).__name__)
            report = {"serving": False, "error": f"health check failed: {type(exc).__name__}"}
            serving = False
        return JSONResponse(report, status_code=200 if serving else 503)

    @router.get("/stats", dependencies=auth, responses=errors, summary="System statistics")
    async def get_stats() -> JSONResponse:
        """Pending per tier, counts per status, next due times, sync lag."""
        return JSONResponse(json_safe(await service.get_stats()))

    @router.post("/sync", dependencies=auth, responses=errors, summary="Run the sync now")
    async def post_sync(request: Request) -> Moved:
        """Move the ClickHouse events due within the transfer horizon into Redis."""
        moved = await audited(
            audit, caller_of(request), "sync", {}, service.sync_clickhouse_to_redis
        )
        return Moved(moved=moved)

    @router.post("/cleanup", dependencies=auth, responses=errors, summary="Run the cleanup now")
    async def post_cleanup(request: Request) -> Removed:
        """Remove finished schedules past their retention."""
        removed = await audited(
            audit, caller_of(request), "cleanup", {}, service.cleanup_old_schedules
        )
        return Removed(removed=removed)

    def _rotation() -> KeyRotator:
        if rotation is None:
            raise ApiError(404, "encryption at rest is off (SCHEDULES_ENCRYPTION_KEYS is unset)")
        return rotation

    @router.post(
        "/rotate-keys",
        dependencies=auth,
        responses={**errors, 404: {"model": ErrorOut}},
        status_code=202,
        summary="Re-seal stored payloads with the current keys",
    )
    async def post_rotate_keys(request: Request) -> JSONResponse:
        """Start re-sealing every stored body and headers with the key its tenant uses now (in
        the background; one rotation at a time). Poll ``GET`` for progress."""

        async def begin() -> dict[str, Any]:
            return _rotation().begin()

        status = await audited(
            audit, caller_of(request), "rotate-keys", {}, begin, lambda s: {"state": s.get("state")}
        )
        return JSONResponse(status, status_code=202)

    @router.get(
        "/rotate-keys",
        dependencies=auth,
        responses={**errors, 404: {"model": ErrorOut}},
        summary="Progress of the key rotation",
    )
    async def get_rotate_keys() -> JSONResponse:
        """State (idle, running, done, failed) and per tier: scanned, re-sealed, restored
        (parked events put back once readable) and unreadable payloads."""
        return JSONResponse(_rotation().report())

    def _analytics() -> AnalyticsApi:
        if analytics is None:
            raise ApiError(404, "analytics is disabled (SCHEDULES_ANALYTICS_ENABLED=false)")
        return analytics

    @router.get(
        "/analytics/summary",
        dependencies=[Depends(reader)],
        responses={**errors, 404: {"model": ErrorOut}},
        summary="Execution summary over a time range",
    )
    async def get_summary(
        request: Request,
        start_date: StartDate = None,
        end_date: EndDate = None,
        tenant: TenantFilter = None,
    ) -> JSONResponse:
        """Totals, success rate, lateness percentiles, top failing entity types and actions,
        of the caller's tenant (an admin's: every tenant's, or ``tenant``'s)."""
        _only(request, _SUMMARY_PARAMS)
        start, end = _window(start_date, end_date)
        whose = _tenant_filter(caller_of(request), tenant)
        return JSONResponse(json_safe(await _analytics().get_summary(start, end, tenant=whose)))

    @router.get(
        "/analytics/performance",
        dependencies=[Depends(reader)],
        responses={**errors, 404: {"model": ErrorOut}},
        summary="Performance metrics per hour or day",
    )
    async def get_performance(
        request: Request,
        start_date: StartDate = None,
        end_date: EndDate = None,
        entity_type: Filter = None,
        action: Filter = None,
        topic: Filter = None,
        granularity: Annotated[Granularity, Query()] = "hour",
        tenant: TenantFilter = None,
    ) -> JSONResponse:
        """Counts, average and p50/p95/p99 lateness, average processing time, per period, of
        the caller's tenant (an admin's: every tenant's summed, or ``tenant``'s)."""
        _only(request, _PERF_PARAMS)
        start, end = _window(start_date, end_date)
        whose = _tenant_filter(caller_of(request), tenant)
        rows = await _analytics().get_performance_metrics(
            start_date=start,
            end_date=end,
            entity_type=entity_type,
            action=action,
            topic=topic,
            granularity=granularity,
            tenant=whose,
        )
        return JSONResponse(json_safe(rows))

    @router.get(
        "/metrics",
        dependencies=[] if open_metrics else [Depends(reader)],
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text"}},
        summary="Prometheus metrics",
    )
    async def get_metrics() -> Response:
        """Every metric in the Prometheus text format 0.0.4."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return router

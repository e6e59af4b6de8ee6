"""The audit trail over HTTP: ``GET /api/v1/audit`` (admin), and :func:`audited`, which
records a mutating call with its caller, parameters and outcome."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from delayline.api.keys import Principal
from delayline.api.schemas import ApiError, ErrorOut, to_utc
from delayline.domain.audit import AuditEntry, AuditQuery
from delayline.domain.events import utc_now

PREFIX = "/api/v1/audit"
DEFAULT_WINDOW = timedelta(days=1)
MAX_PAGE = 1000
T = TypeVar("T")


class AuditLog(Protocol):
    """Records actions and reads them back (``AuditService``)."""

    def record(
        self,
        *,
        key_id: str,
        tenant: str,
        action: str,
        parameters: dict[str, Any],
        outcome: str = "ok",
    ) -> AuditEntry:
        """Record one action (never blocks, never raises)."""
        ...

    async def find(self, query: AuditQuery) -> list[AuditEntry]:
        """Matching entries in time order."""
        ...


async def audited(
    audit: AuditLog | None,
    who: Principal,
    action: str,
    parameters: dict[str, Any],
    call: Callable[[], Awaitable[T]],
    result: Callable[[T], Any] = lambda r: r,
) -> T:
    """Run ``call``; record who ran ``action`` with ``parameters``, and how it ended (``ok``
    with ``result`` of what it returned under ``parameters["result"]``, or the error)."""
    try:
        value = await call()
    except Exception as exc:
        if audit is not None:
            audit.record(
                key_id=who.key_id,
                tenant=who.tenant,
                action=action,
                parameters=parameters,
                outcome=f"error: {type(exc).__name__}",
            )
        raise
    if audit is not None:
        audit.record(
            key_id=who.key_id,
            tenant=who.tenant,
            action=action,
            parameters={**parameters, "result": result(value)},
        )
    return value


class AuditEntryOut(BaseModel):
    """One audited action."""

    id: str
    at: datetime
    key_id: str
    tenant: str
    action: str
    parameters: dict[str, Any]
    outcome: str


class AuditPage(BaseModel):
    """A page of the trail, oldest first; pass ``next_cursor`` as ``cursor`` (null: last)."""

    entries: list[AuditEntryOut]
    next_cursor: str | None


def _utc(name: str, value: datetime) -> datetime:
    try:
        return to_utc(value)
    except ValueError as exc:
        raise ApiError(422, f"{name}: {exc}", field=name) from None


def audit_router(audit: AuditLog | None, admin: Callable[..., Awaitable[Principal]]) -> APIRouter:
    """``GET /api/v1/audit`` behind the ``admin`` scope."""
    router = APIRouter(prefix=PREFIX, tags=["audit"])
    errors: dict[int | str, dict[str, Any]] = {
        c: {"model": ErrorOut} for c in (401, 403, 404, 422, 503)
    }

    @router.get(
        "",
        dependencies=[Depends(admin)],
        responses=errors,
        summary="The audit trail of admin actions",
    )
    async def get_audit(
        since: datetime | None = None,
        until: datetime | None = None,
        key_id: Annotated[str | None, Query(max_length=64)] = None,
        action: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        cursor: Annotated[str, Query(max_length=64)] = "",
    ) -> AuditPage:
        """Who (key id, tenant) did what (action, parameters), when, and how it ended, with
        ``since <= at < until`` (default: the last day), oldest first."""
        if audit is None:
            raise ApiError(404, "the audit trail is not kept by this service")
        end = _utc("until", until) if until is not None else utc_now()
        start = _utc("since", since) if since is not None else end - DEFAULT_WINDOW
        if start >= end:
            raise ApiError(422, "since must be before until", field="since")
        query = AuditQuery(start, end, key_id, action, after=cursor, limit=limit)
        entries = await audit.find(query)
        page = [AuditEntryOut.model_validate(e.to_dict()) for e in entries]
        more = len(page) == limit
        return AuditPage(entries=page, next_cursor=page[-1].id if more else None)

    return router

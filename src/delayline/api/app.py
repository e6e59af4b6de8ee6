"""The FastAPI application: routes, API-key auth, JSON errors, body limit and HTTP metrics.

Every error is a JSON body ``{"error": ..., "field": ...}``: bad input gets a 4xx saying what is
wrong, an unavailable store gets 503 with ``Retry-After``, a store whose disk is full 507, a write
whose outcome is unknown (sent, no answer) 504 with the schedule ids to retry with; a 500 means a
bug.

Middleware, outermost first: HTTP metrics, API-key check (from the request head: an
unauthenticated body is never read; each route then checks its scope, 403 when the key lacks
it), body limit (declared size refused before reading, the rest
read under a size and time bound).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from delayline.api.audit_routes import AuditLog, audit_router
from delayline.api.auth import (
    WWW_AUTHENTICATE,
    ApiKeyAuth,
    AuthenticationError,
    AuthMiddleware,
    ForbiddenError,
    requires,
)
from delayline.api.keys import ApiKeyEntry
from delayline.api.keys import Scope as KeyScope
from delayline.api.routes_monitoring import PREFIX as MONITORING
from delayline.api.routes_monitoring import monitoring_router
from delayline.api.routes_schedules import schedules_router
from delayline.api.schemas import ApiError
from delayline.domain.codec import UndecryptablePayload
from delayline.domain.events import InvalidEventError
from delayline.errors import OutcomeUnknown, StorageFull, unavailable_error_types
from delayline.metrics import Metrics
from delayline.ports import AnalyticsApi, HealthCheck, KeyRotator, SchedulerApi

__all__ = ["create_app"]

log = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
DEFAULT_BODY_TIMEOUT = 30.0
RETRY_AFTER_SECONDS = 5
UNMATCHED_ROUTE = "unmatched"


def create_app(
    service: SchedulerApi,
    *,
    analytics: AnalyticsApi | None,
    health: HealthCheck,
    metrics: Metrics,
    api_keys: Sequence[ApiKeyEntry],
    open_health: bool = True,
    open_metrics: bool = True,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    rotation: KeyRotator | None = None,
    audit: AuditLog | None = None,
) -> FastAPI:
    """The HTTP API over ``service``.

    ``api_keys`` empty: no authentication, every caller is the default tenant's admin.
    Otherwise every endpoint needs one of the keys except the documentation, and health and
    metrics when ``open_health``/``open_metrics``; the key is checked before the body is read,
    its scope by the route. ``audit`` None: nothing is audited and ``/api/v1/audit`` is 404.
    ``analytics`` None: the analytics endpoints answer 404 (analytics disabled). Requests over
    ``max_request_bytes`` get 413; a body not received within ``body_timeout`` seconds gets 408.
    """
    app = FastAPI(
        title="Delayline",
        summary="Hybrid delayed-event scheduler: schedule, inspect and monitor events.",
        version="0.1.0",
    )
    auth = ApiKeyAuth(api_keys, metrics)
    reader, scheduler, admin = (
        requires(auth, s) for s in (KeyScope.READ, KeyScope.SCHEDULE, KeyScope.ADMIN)
    )
    # Monitoring first: the schedules router's /{schedule_id} matches any path below it.
    app.include_router(
        monitoring_router(
            service,
            analytics=analytics,
            health=health,
            metrics=metrics,
            reader=reader,
            admin=admin,
            open_health=open_health,
            open_metrics=open_metrics,
            rotation=rotation,
            audit=audit,
        )
    )
    app.include_router(audit_router(audit, admin))
    app.include_router(schedules_router(service, reader=reader, scheduler=scheduler, audit=audit))
    _install_error_handlers(app)
    # Added last = outermost: requests refused by the key check or the body limit are counted.
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_request_bytes, timeout=body_timeout)
    open_paths = {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    if open_health:
        open_paths.add(f"{MONITORING}/health")
    if open_metrics:
        open_paths.add(f"{MONITORING}/metrics")
    app.add_middleware(
        AuthMiddleware,
        auth=auth,
        open_paths={p for p in open_paths if p},
        refuse=_refuse_unauthenticated,
    )
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics)
    return app


async def _refuse_unauthenticated(send: Send, exc: AuthenticationError) -> None:
    body = orjson.dumps({"error": exc.message, "field": None})
    await _send_json(send, 401, body, [(b"www-authenticate", WWW_AUTHENTICATE.encode())])


def _error(
    status: int,
    error: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    return JSONResponse({"error": error, "field": field, **extra}, status, headers=headers)


def _field(loc: Sequence[int | str]) -> str | None:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header"}:
        parts = parts[1:]
    # The tags of the one-event-or-batch union are not part of the client's document.
    if parts and parts[0] in {"event", "batch"}:
        parts = parts[1:]
    return ".".join(parts) or None


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return _error(exc.status_code, exc.error, exc.field, exc.headers)

    async def undecryptable(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, UndecryptablePayload)
        return _error(409, exc.reason)

    async def invalid_event(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, InvalidEventError)
        return _error(422, str(exc), exc.field)

    async def unauthenticated(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AuthenticationError)
        return _error(401, exc.message, headers={"WWW-Authenticate": WWW_AUTHENTICATE})

    async def forbidden(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ForbiddenError)
        return _error(403, exc.message)

    async def invalid_request(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        details: list[dict[str, str | None]] = []
        for err in exc.errors():
            field = _field(err.get("loc", ()))
            message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
            if err.get("type") == "json_invalid":
                message = f"invalid JSON: {err.get('ctx', {}).get('error', 'cannot parse')}"
                field = None
            details.append({"field": field, "message": message})
        first = details[0] if details else {"field": None, "message": "invalid request"}
        field, message = first["field"], str(first["message"])
        return _error(422, f"{field}: {message}" if field else message, field, details=details)

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return _error(
            exc.status_code, str(exc.detail), headers=dict(exc.headers) if exc.headers else None
        )

    async def outcome_unknown(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, OutcomeUnknown)
        log.warning("outcome unknown (%s): %s", exc.dependency, type(exc.__cause__).__name__)
        return _error(
            504,
            "outcome unknown: retry with the same schedule_id "
            f"({exc.dependency} did not answer in time; the event may or may not be stored)",
            schedule_ids=exc.schedule_ids or None,
        )

    async def storage_full(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StorageFull)
        log.error("%s cannot store: %s", exc.dependency, exc.detail)
        return _error(
            507,
            f"{exc.dependency} cannot store the request: its disk is full or not writable "
            f"({exc.detail[:200]}); nothing was stored",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    async def unavailable(_: Request, exc: Exception) -> JSONResponse:
        dependency = getattr(exc, "dependency", None)
        log.warning("dependency unavailable (%s): %s", dependency, type(exc).__name__)
        what = f"{dependency} is" if isinstance(dependency, str) else "a storage dependency is"
        return _error(
            503,
            f"{what} unavailable; retry later",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    async def internal(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return _error(500, "internal error")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(UndecryptablePayload, undecryptable)
    app.add_exception_handler(InvalidEventError, invalid_event)
    app.add_exception_handler(AuthenticationError, unauthenticated)
    app.add_exception_handler(ForbiddenError, forbidden)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(OutcomeUnknown, outcome_unknown)
    app.add_exception_handler(StorageFull, storage_full)
    # A store or broker that cannot be reached: 503 + Retry-After, not 500 (the service raises
    # DependencyUnavailable; the other types reach here from a call no breaker wraps).
    for exc_type in unavailable_error_types():
        app.add_exception_handler(exc_type, unavailable)
    app.add_exception_handler(Exception, internal)


async def _send_json(
    send: Send, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """Answer ``body`` and close the connection (the request's body is left unread)."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Answer 413 to a request body over ``max_bytes`` (declared or streamed) before parsing,
    and 408 to one not received within ``timeout`` seconds."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._too_large = orjson.dumps(
            {"error": f"request body is larger than {max_bytes} bytes", "field": None}
        )
        self._too_slow = orjson.dumps(
            {"error": f"request body not received within {timeout:g} s", "field": None}
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await _send_json(send, 413, self._too_large)
                return
        # Read the whole body (bounded in size and time) so a chunked upload cannot exceed the
        # limit either, and a client trickling its body cannot hold the request forever.
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return  # the client went away
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        await _send_json(send, 413, self._too_large)
                        return
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await _send_json(send, 408, self._too_slow)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)


class HttpMetricsMiddleware:
    """Count requests and their duration by route template (never the raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            template = getattr(route, "path_format", None) or UNMATCHED_ROUTE
            self.metrics.http_request(
                template, scope["method"], status, time.perf_counter() - started
            )

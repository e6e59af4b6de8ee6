"""The HTTP server of the API: uvicorn over :func:`delayline.api.app.create_app`, with bounds on
what a client can hold.

- A connection that has not sent a complete request head within ``api_header_timeout`` (from
  when it opened, or from the end of its previous response) is closed.
- A request body not received within ``api_body_timeout`` is answered 408 (in the app).
- An idle keep-alive connection is closed after ``api_keep_alive_timeout``.
- Beyond ``api_max_connections`` open connections (or requests in flight) a request is answered
  503 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from delayline.api.app import create_app
from delayline.api.audit_routes import AuditLog
from delayline.metrics import Metrics
from delayline.ports import AnalyticsApi, HealthCheck, KeyRotator, SchedulerApi
from delayline.settings import Settings, is_loopback

log = logging.getLogger(__name__)


class HeadTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head is late."""

    header_timeout = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # the request head is complete
            self._disarm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._arm_head_deadline()  # waiting for the next request's head

    def _arm_head_deadline(self) -> None:
        self._disarm_head_deadline()
        self._head_deadline = self.loop.call_later(self.header_timeout, self._head_too_late)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_late(self) -> None:
        self._head_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


class ApiServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the application owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build_api_server(
    settings: Settings,
    service: SchedulerApi,
    *,
    analytics: AnalyticsApi | None,
    health: HealthCheck,
    metrics: Metrics,
    rotation: KeyRotator | None = None,
    audit: AuditLog | None = None,
) -> ApiServer:
    """The API on ``settings.api_host``/``api_port`` with its limits (see the module docstring)."""
    s = settings
    if not s.api_keys and not is_loopback(s.api_host):
        log.warning(
            "SECURITY: the HTTP API on %s serves everyone on the network WITHOUT "
            "AUTHENTICATION (SCHEDULES_API_ALLOW_UNAUTHENTICATED=true); set "
            "SCHEDULES_API_KEYS to require a key",
            s.api_host,
        )
    app = create_app(
        service,
        analytics=analytics,
        health=health,
        metrics=metrics,
        api_keys=s.api_keys,
        open_health=s.api_open_health,
        open_metrics=s.api_open_metrics,
        max_request_bytes=s.api_max_request_bytes,
        body_timeout=s.api_body_timeout,
        rotation=rotation,
        audit=audit,
    )
    protocol = type(
        "ApiH11Protocol", (HeadTimeoutH11Protocol,), {"header_timeout": s.api_header_timeout}
    )
    config = uvicorn.Config(
        app,
        host=s.api_host,
        port=s.api_port,
        http=protocol,
        timeout_keep_alive=s.api_keep_alive_timeout,
        limit_concurrency=s.api_max_connections,
        log_level="warning",
        access_log=False,
    )
    return ApiServer(config)


@contextlib.asynccontextmanager
async def serving(server: ApiServer, *, shutdown_timeout: float) -> AsyncIterator[None]:
    """Serve while inside: entered once the server listens (or raise if it cannot), left once
    it has closed its connections (those still open after ``shutdown_timeout`` are cut)."""
    config = server.config
    task = asyncio.create_task(server.serve(), name="api")
    for _ in range(1000):  # uvicorn sets a flag when it listens, with no event to wait on
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if not server.started:
        server.should_exit = True
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 1.0)
        raise RuntimeError(f"the HTTP API could not listen on {config.host}:{config.port}")
    log.info("HTTP API on http://%s:%d (docs at /docs)", config.host, config.port)
    try:
        yield
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, shutdown_timeout)
        except TimeoutError:
            log.warning("the HTTP API did not close within %.0f s", shutdown_timeout)
        except Exception:
            log.exception("the HTTP API failed")

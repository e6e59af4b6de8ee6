"""Served APIs for the HTTP tests, each on a free port in a background thread.

``make_api(real_service=True)`` serves the whole :class:`Application` — both tiers (the
session's Valkey and chDB), the dispatcher firing to the session's Tansu broker and the Kafka
ingress — under the same Redis key prefix as the ``store`` fixture, so tests can check through
``store`` what the API really wrote. Without it a real uvicorn serves ``create_app`` over
:class:`StoreService`, a test double of ``SchedulerApi`` over the real ``RedisNearTermStore``,
for pure HTTP validation only.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from redis.asyncio import Redis

from delayline.adapters.embedded import EmbeddedTansu, EmbeddedValkey, free_port
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.api.app import create_app
from delayline.api.keys import ApiKeyEntry
from delayline.bootstrap import Application
from delayline.clock import SystemClock
from delayline.domain.events import ScheduledEvent, new_event, to_epoch_us
from delayline.domain.outcomes import EventFilter, LifecycleEntry
from delayline.metrics import Metrics
from delayline.ports import SchedulerApi, Upserted
from delayline.services.scheduler import SchedulerService
from delayline.settings import load_settings

T = TypeVar("T")


class StoreService:
    """``SchedulerApi`` over one real Redis store (Redis errors surface unwrapped, as they would
    from an unwrapped store: the API must still answer 503)."""

    def __init__(self, store: RedisNearTermStore, *, max_body_bytes: int = 1024 * 1024) -> None:
        self.store = store
        self.max_body_bytes = max_body_bytes
        self.syncs = 0
        self.cleanups = 0

    def build_event(self, **fields: Any) -> ScheduledEvent:
        return new_event(max_body_bytes=self.max_body_bytes, **fields)

    async def schedule_events(
        self, events: Sequence[ScheduledEvent], source: str = "api"
    ) -> list[bool]:
        return await self.store.schedule(events)

    async def upsert_events(
        self, events: Sequence[ScheduledEvent], revisions: Sequence[str], source: str = "api"
    ) -> list[Upserted]:
        return await SchedulerService(self.store, SystemClock()).upsert_events(events, revisions)

    async def replace(self, event: ScheduledEvent, source: str = "api") -> Upserted:
        return await SchedulerService(self.store, SystemClock()).replace(event)

    async def cancel_event(self, schedule_id: str) -> bool:
        return await self.store.cancel(schedule_id)

    async def reschedule_event(self, schedule_id: str, scheduled_at: datetime) -> bool:
        return await self.store.reschedule(schedule_id, to_epoch_us(scheduled_at))

    async def get_event(self, schedule_id: str) -> ScheduledEvent | None:
        return await self.store.get(schedule_id)

    async def get_history(self, schedule_id: str) -> list[LifecycleEntry]:
        return []

    async def find_events(
        self, match: EventFilter, *, after: str = "", limit: int = 100
    ) -> list[ScheduledEvent]:
        return []

    async def cancel_by_key(self, correlation_id: str) -> dict[str, int]:
        return {}

    async def reschedule_by_key(
        self, correlation_id: str, scheduled_at: datetime
    ) -> dict[str, int]:
        return {}

    async def get_stats(self) -> dict[str, Any]:
        counts = await self.store.counts()
        return {
            "pending": counts["pending"],
            "redis_pending": counts["pending"],
            "clickhouse_pending": 0,
            "counts": counts,
            "next_due_us": await self.store.next_due_us(),
            "sync_lag_seconds": float("nan"),  # the API must turn this into null
        }

    async def sync_clickhouse_to_redis(self) -> int:
        self.syncs += 1
        return 0

    async def cleanup_old_schedules(self) -> int:
        self.cleanups += 1
        return 0


@dataclass
class StaticHealth:
    """A ``HealthCheck`` whose report the test sets."""

    report: dict[str, Any] = field(
        default_factory=lambda: {
            "serving": True,
            "dependencies": {"redis": {"state": "up", "breaker": "closed"}},
        }
    )

    error: Exception | None = None

    async def check(self) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        return self.report


@dataclass
class FakeAnalytics:
    """An ``AnalyticsApi`` that records its calls and returns canned rows."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)

    async def get_performance_metrics(
        self,
        start_date: datetime,
        end_date: datetime,
        entity_type: str | None = None,
        action: str | None = None,
        topic: str | None = None,
        granularity: str = "hour",
        tenant: str | None = None,
    ) -> list[dict[str, Any]]:
        self.calls.append(
            (
                "performance",
                {
                    "start_date": start_date,
                    "end_date": end_date,
                    "entity_type": entity_type,
                    "action": action,
                    "topic": topic,
                    "granularity": granularity,
                    "tenant": tenant,
                },
            )
        )
        return self.rows

    async def get_summary(
        self, start_date: datetime, end_date: datetime, tenant: str | None = None
    ) -> dict[str, Any]:
        self.calls.append(
            ("summary", {"start_date": start_date, "end_date": end_date, "tenant": tenant})
        )
        return {"total_executions": len(self.rows), "success_rate": float("nan")}


class ApiServer:
    """uvicorn serving ``app`` on a socket bound to a free loopback port, in its own thread."""

    def __init__(self, app: FastAPI, on_close: Callable[[], Awaitable[None]]) -> None:
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on such sockets; with proto 0 every
        # keep-alive response waited ~40 ms for a delayed ACK (headers and body are two writes).
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))  # bound here: no race for the port
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", ws="none", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._on_close = on_close
        self._thread = threading.Thread(target=self._run, name=f"api-{self.port}", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            try:
                await self._server.serve(sockets=[self._sock])
            finally:
                await self._on_close()

        asyncio.run(main())

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API server did not start")
            time.sleep(0.005)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(15)
        self._sock.close()
        assert not self._thread.is_alive(), "the API server did not stop"


class AppServer:
    """The whole :class:`Application` on its own event loop in a thread, serving HTTP."""

    def __init__(self, app: Application) -> None:
        self.app = app
        self.url = f"http://{app.settings.api_host}:{app.settings.api_port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self.app.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise
        self._ready.set()
        await self._stop.wait()
        await self.app.stop()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError("the application did not start")
        if self._error is not None:
            raise RuntimeError("the application did not start") from self._error

    def call(self, coro: Awaitable[T]) -> T:
        """Run ``coro`` on the application's loop (from a thread that is not that loop's)."""
        assert self._loop is not None

        async def run() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(30)

    async def acall(self, coro: Awaitable[T]) -> T:
        """:meth:`call` from a test's own event loop."""
        return await asyncio.to_thread(self.call, coro)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the application did not stop"


@dataclass
class Api:
    """A running API: its URL, a client, and the objects behind it."""

    server: ApiServer | AppServer
    service: StoreService
    """The double's counters; with ``real_service`` it only holds the store."""
    application: Application | None
    metrics: Metrics
    health: StaticHealth
    analytics: FakeAnalytics | None
    client: httpx.Client

    @property
    def url(self) -> str:
        return self.server.url


class ApiFactory(Protocol):
    """Start an API server with these options (stopped after the test)."""

    def __call__(
        self,
        *,
        api_keys: Sequence[ApiKeyEntry] = (),
        open_health: bool = True,
        open_metrics: bool = True,
        analytics: bool = True,
        redis_url: str | None = None,
        max_request_bytes: int = 1024 * 1024,
        max_body_bytes: int = 64 * 1024,
        real_service: bool = False,
        immediate_horizon_seconds: int = 86400,
        extra_settings: Mapping[str, Any] | None = None,
    ) -> Api: ...


@pytest.fixture
def make_api(
    valkey: EmbeddedValkey,
    broker: EmbeddedTansu,
    clickhouse_dsn: str,
    clickhouse_root: object,  # the session's engine stays open: the application shares it
    store: RedisNearTermStore,
    unique: str,
    tmp_path: Path,
) -> Iterator[ApiFactory]:
    """Factory of running API servers over the same key prefix as ``store``."""
    started: list[Api] = []

    def application(
        *, api_keys: Sequence[ApiKeyEntry], open_health: bool, open_metrics: bool, **settings: Any
    ) -> AppServer:
        horizon = settings["immediate_horizon_seconds"]
        config = load_settings(
            redis_url=valkey.url,
            redis_key_prefix=f"t-{unique}",
            kafka_bootstrap_servers=broker.bootstrap_servers,
            kafka_delayed_topic_name=f"delayed-{unique}",
            kafka_dead_letter_topic_name=f"delayed-{unique}.dlq",
            kafka_consumer_group=f"group-{unique}",
            clickhouse_dsn=clickhouse_dsn,
            clickhouse_database=f"api_{unique}",
            data_dir=tmp_path / "app",
            api_port=free_port(),
            api_keys=list(api_keys),
            api_open_health=open_health,
            api_open_metrics=open_metrics,
            transfer_horizon_seconds=min(horizon, 3600),
            clickhouse_sync_interval=min(horizon, 3600) / 4,
            redis_processing_interval=1,
            analytics_flush_interval=0.2,
            **settings,
        )
        server = AppServer(Application(config))
        server.start()
        return server

    def factory(
        *,
        api_keys: Sequence[ApiKeyEntry] = (),
        open_health: bool = True,
        open_metrics: bool = True,
        analytics: bool = True,
        redis_url: str | None = None,
        max_request_bytes: int = 1024 * 1024,
        max_body_bytes: int = 64 * 1024,
        real_service: bool = False,
        immediate_horizon_seconds: int = 86400,
        extra_settings: Mapping[str, Any] | None = None,
    ) -> Api:
        client = Redis.from_url(redis_url or valkey.url, socket_connect_timeout=2)
        service = StoreService(
            RedisNearTermStore(client, prefix=f"t-{unique}", result_ttl_seconds=600),
            max_body_bytes=max_body_bytes,
        )
        metrics = Metrics()
        health = StaticHealth()
        fake_analytics = FakeAnalytics() if analytics else None
        if real_service and redis_url is None:
            whole = application(
                api_keys=api_keys,
                open_health=open_health,
                open_metrics=open_metrics,
                max_body_bytes=max_body_bytes,
                analytics_enabled=analytics,
                immediate_horizon_seconds=immediate_horizon_seconds,
                **(extra_settings or {}),
            )
            api = Api(
                whole,
                service,
                whole.app,
                whole.app.metrics,
                health,
                None,
                httpx.Client(base_url=whole.url, timeout=10),
            )
            started.append(api)
            return api
        scheduler: SchedulerApi = service
        if real_service:  # Redis unreachable: the service over that store alone
            scheduler = SchedulerService(
                service.store, SystemClock(), max_body_bytes=max_body_bytes
            )
        app = create_app(
            scheduler,
            analytics=fake_analytics,
            health=health,
            metrics=metrics,
            api_keys=api_keys,
            open_health=open_health,
            open_metrics=open_metrics,
            max_request_bytes=max_request_bytes,
        )
        server = ApiServer(app, client.aclose)
        server.start()
        api = Api(
            server,
            service,
            None,
            metrics,
            health,
            fake_analytics,
            httpx.Client(base_url=server.url, timeout=10),
        )
        started.append(api)
        return api

    yield factory
    for api in started:
        api.client.close()
        api.server.stop()


@pytest.fixture
def api(make_api: ApiFactory) -> Api:
    """An API server without authentication, with analytics."""
    return make_api()


@pytest.fixture
async def aclient(api: Api) -> AsyncIterator[httpx.AsyncClient]:
    """An async client of ``api`` (for tests that also await the ``store``)."""
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        yield client

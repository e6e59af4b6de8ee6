"""The composition root: reads settings once, starts what is embedded, wires adapters to services.

Nothing else in the package constructs adapters; nothing here holds scheduling logic. Each part
of a running process is an async context manager entered in order on one
:class:`contextlib.AsyncExitStack` (infrastructure, connections, services, then the loops each
role runs, the HTTP API last), so shutdown runs in the reverse order: the API stops taking
requests first, the dispatcher drains before the recorders flush, and the embedded servers stop
last.

Just over 400 lines: this is the one place that knows how every role's part starts and stops;
the wiring itself is in :mod:`delayline.wiring`, the parts in their own modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from delayline.adapters.clickhouse.client import ClickHouseClient
from delayline.adapters.clickhouse.migrations import run_migrations
from delayline.adapters.encryption import PayloadCipher, UnreadableEvents
from delayline.adapters.guarded import GuardedMessageSource
from delayline.adapters.kafka_consumer import KafkaDelayedSource
from delayline.adapters.kafka_producer import KafkaEventPublisher, producer_config
from delayline.adapters.kafka_topics import KafkaTopics
from delayline.adapters.redis_connect import redis_servers
from delayline.adapters.runtime_dir import DataDirInUseError as DataDirInUseError
from delayline.adapters.runtime_dir import (
    Endpoints,
    data_dir_node_id,
    infrastructure,
    owns_data_dir,
)
from delayline.adapters.runtime_dir import read_runtime_file as read_runtime_file
from delayline.api.server import ApiServer, build_api_server, serving
from delayline.clock import SystemClock
from delayline.firing import Firing, build_firing
from delayline.firing_workers import check_workers
from delayline.gauges import GaugeReaders, refresh_gauges
from delayline.health import DependencyHealth, FanOutSink, MetricsSink, process_health
from delayline.metrics import Metrics
from delayline.ports import Clock
from delayline.resilience import CircuitBreaker
from delayline.roles import Role, parse_roles
from delayline.services.ingress import DelayedEventsConsumer
from delayline.services.scheduler import SchedulerService
from delayline.settings import Settings
from delayline.wiring import Wired, wire

log = logging.getLogger(__name__)


"""Where the dispatcher runs: a thread, a process, or ``--workers`` processes."""


class NotStartedError(RuntimeError):
    """The application is used before ``start()`` (or after ``stop()``)."""


class RoleNotRunError(RuntimeError):
    """A part of a role this process does not run was asked for."""


@dataclass(frozen=True)
class Running:
    """Everything a started process runs; a part is None when no role of it runs it."""

    endpoints: Endpoints
    wired: Wired
    health: DependencyHealth
    firing: Firing | None = None
    """The dispatcher (``fire``)."""
    consumer: DelayedEventsConsumer | None = None
    """The Kafka ingress (``ingest``)."""
    consumer_source: GuardedMessageSource | None = None
    publisher: KafkaEventPublisher | None = None
    """A producer for the Kafka health probe when no firing thread holds one."""
    api_server: ApiServer | None = None
    """The HTTP API (``api``)."""


@contextlib.asynccontextmanager
async def background(
    run: Callable[[asyncio.Event], Coroutine[Any, Any, None]], name: str, timeout: float
) -> AsyncIterator[None]:
    """Run ``run(stopping)`` as a task while inside; on leaving, set ``stopping`` and wait for
    it (cancelled past ``timeout``)."""
    stopping = asyncio.Event()
    task = asyncio.create_task(run(stopping), name=name)
    try:
        yield
    finally:
        stopping.set()
        try:
            await asyncio.wait_for(task, timeout)
        except TimeoutError:
            log.warning("task %s did not stop within %.0f s", name, timeout)
        except Exception:
            log.exception("task %s failed", name)


class Application:
    """Delayline with everything wired: ``async with Application(settings) as app``.

    ``roles`` (default: ``settings.roles``) chooses what this process runs; see
    :mod:`delayline.roles`.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        roles: Iterable[str] | None = None,
        clock: Clock | None = None,
        migrate: bool = True,
    ) -> None:
        self.roles: frozenset[Role] = settings.roles if roles is None else parse_roles(roles)
        if "node_id" not in settings.model_fields_set and owns_data_dir(
            settings, kafka=bool(self.roles & {"fire", "ingest"})
        ):
            # The data-directory lock makes this process the only one of its directory, so
            # the id can outlive it: restarted after a crash, it takes its shard leases back
            # at once instead of waiting for them to expire.
            settings = settings.model_copy(update={"node_id": data_dir_node_id(settings.data_dir)})
        self.settings = settings
        self.migrate = migrate
        if "fire" in self.roles:
            check_workers(settings.workers, settings.redis_shards)
        self.clock: Clock = clock or SystemClock()
        self.metrics = Metrics()
        self.sink = FanOutSink(MetricsSink(self.metrics))
        # Probes are cheap: retry at most every few seconds, so recovery is quick.
        self.breakers = {
            name: CircuitBreaker(name, max_reset_timeout=5.0, on_change=self._breaker_changed)
            for name in self._breaker_names()
        }
        for name in self.breakers:
            self.metrics.set_breaker_state(name, "closed")
        ring = settings.key_ring()
        self.cipher = (
            None
            if ring is None
            else PayloadCipher(ring, UnreadableEvents(on_found=self.metrics.undecryptable))
        )
        self._stack: contextlib.AsyncExitStack | None = None
        self._running: Running | None = None

    def _breaker_names(self) -> list[str]:
        names = ["redis", "clickhouse"]
        if "fire" in self.roles:
            names += ["redis_firing", "kafka_producer"]
        if "ingest" in self.roles:
            names.append("kafka_consumer")
        return names

    @property
    def fires_in_thread(self) -> bool:
        """Whether this process fires in a thread of its own (one worker, thread runtime)."""
        return (
            "fire" in self.roles
            and self.settings.workers == 1
            and self.settings.firing_runtime == "thread"
        )

    @property
    def uses_kafka(self) -> bool:
        """Whether a role of this process talks to Kafka (``fire`` or ``ingest``)."""
        return bool(self.roles & {"fire", "ingest"})

    @property
    def running(self) -> Running:
        """What this process runs (after :meth:`start`)."""
        if self._running is None:
            raise NotStartedError("the application is not started: call `await start()` first")
        return self._running

    @property
    def wired(self) -> Wired:
        """The adapters and services (after :meth:`start`)."""
        return self.running.wired

    @property
    def service(self) -> SchedulerService:
        """The scheduler service (after :meth:`start`, with the ``schedule`` role)."""
        if "schedule" not in self.roles:
            raise RoleNotRunError(
                f"this process does not schedule (roles: {', '.join(sorted(self.roles))})"
            )
        return self.wired.service

    def health(self) -> DependencyHealth:
        """The health check over the dependencies this process uses."""
        return self.running.health

    async def __aenter__(self) -> Application:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start embedded servers if no URLs are set, connect, and start each role's loops;
        a failed start undoes what it did (never leaving embedded servers behind)."""
        if self._stack is not None:
            return
        self._stack = stack = contextlib.AsyncExitStack()
        try:
            self._running = await self._enter(stack)
        except BaseException:
            self._stack = None
            await stack.aclose()
            raise

    async def stop(self) -> None:
        """Drain in the reverse order of start: the API, the loops, the dispatcher (claimed
        batches finished and acknowledged), the recorders (flushed), then the servers."""
        stack, self._stack, self._running = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def _enter(self, stack: contextlib.AsyncExitStack) -> Running:
        s = self.settings
        timeout = s.shutdown_timeout
        endpoints = await stack.enter_async_context(infrastructure(s, kafka=self.uses_kafka))
        # The API, ingress and sync share this pool; the firing path has its own.
        redis = redis_servers(
            endpoints.redis_url,
            max_connections=s.redis_max_connections,
            pool_timeout=s.redis_pool_timeout,
            command_timeout=s.redis_command_timeout,
        )
        stack.push_async_callback(redis.aclose)
        await redis.ping()
        clickhouse = ClickHouseClient(
            s.resolved_clickhouse_dsn, s.clickhouse_database, s.clickhouse_cluster
        )
        await stack.enter_async_context(clickhouse)
        if self.migrate:
            await run_migrations(
                clickhouse, ttl_days=s.execution_history_ttl_days, progress=log.info
            )
        wired = wire(
            s,
            redis,
            clickhouse,
            clock=self.clock,
            breakers=self.breakers,
            cipher=self.cipher,
            metrics=self.metrics,
        )
        await wired.near.inner.check_shard_count()  # refuses a count other than the recorded one
        await wired.lifecycle.start()
        stack.push_async_callback(wired.lifecycle.close)  # flushes the last transitions
        await wired.audit.start()
        stack.push_async_callback(wired.audit.close)  # flushes the last audit entries
        await wired.analytics.initialize()
        stack.push_async_callback(wired.analytics.close)  # flushes the last results
        if s.analytics_enabled:
            self.sink.add(wired.analytics_recorder)
        if wired.rotation is not None:
            stack.push_async_callback(wired.rotation.stop)
        publisher = await self._health_publisher(stack, endpoints)
        firing = await self._start_firing(stack, endpoints, wired) if "fire" in self.roles else None
        source = consumer = None
        if "ingest" in self.roles:
            source, consumer = await self._start_ingest(stack, endpoints, wired)
        health = process_health(
            s,
            wired,
            self.breakers,
            firing=firing,
            consumer=consumer,
            publisher=publisher,
            cipher=self.cipher,
            uses_kafka=self.uses_kafka,
        )
        readers = GaugeReaders(
            near_counts=wired.near.counts,
            far_counts=wired.far.counts,
            claims_in_flight=(lambda: firing.claims_in_flight) if firing is not None else None,
            consumer_lag=(lambda: source.lag) if source is not None else None,
        )
        await stack.enter_async_context(
            background(lambda stop: refresh_gauges(self.metrics, readers, stop), "gauges", timeout)
        )
        if "sync" in self.roles:
            run_sync = wired.sync.run_periodically
            await stack.enter_async_context(
                background(
                    lambda stop: run_sync(s.clickhouse_sync_interval, s.cleanup_interval, stop),
                    "sync",
                    timeout,
                )
            )
        api_server = None
        if "api" in self.roles:
            api_server = build_api_server(
                s,
                wired.service,
                analytics=wired.analytics if s.analytics_enabled else None,
                health=health,
                metrics=self.metrics,
                rotation=wired.audited_rotation,
                audit=wired.audit,
            )
            await stack.enter_async_context(serving(api_server, shutdown_timeout=timeout))
        return Running(endpoints, wired, health, firing, consumer, source, publisher, api_server)

    async def _health_publisher(
        self, stack: contextlib.AsyncExitStack, endpoints: Endpoints
    ) -> KafkaEventPublisher | None:
        """A producer for the Kafka probe, unless the firing thread's serves (or no Kafka)."""
        s = self.settings
        if not self.uses_kafka or self.fires_in_thread:
            return None
        publisher = KafkaEventPublisher(
            producer_config(
                endpoints.bootstrap_servers,
                linger_ms=s.kafka_linger_ms,
                lease_seconds=s.lease_seconds,
                extra=s.resolved_kafka_client_options,
            )
        )
        await publisher.start()
        stack.push_async_callback(publisher.stop, s.shutdown_timeout)
        return publisher

    async def _start_firing(
        self, stack: contextlib.AsyncExitStack, endpoints: Endpoints, wired: Wired
    ) -> Firing:
        s = self.settings
        if not self.fires_in_thread and not isinstance(self.clock, SystemClock):
            raise ValueError(
                "a clock of its own needs SCHEDULES_FIRING_RUNTIME=thread and one worker"
            )
        firing = build_firing(
            s,
            redis_url=endpoints.redis_url,
            bootstrap_servers=endpoints.bootstrap_servers,
            sink=self.sink,
            lifecycle=wired.lifecycle.recorder,
            clock=self.clock,
            breakers=self.breakers,
            cipher=self.cipher,
            on_breaker_change=self._breaker_changed,
            on_restart=self.metrics.firing_process_restarted,
        )
        # Pushed before starting: a start that fails half-way is stopped too.
        stack.push_async_callback(firing.stop, s.shutdown_timeout)
        await firing.start()
        self.metrics.watch_ownership(lambda: firing.ownership)
        return firing

    async def _start_ingest(
        self, stack: contextlib.AsyncExitStack, endpoints: Endpoints, wired: Wired
    ) -> tuple[GuardedMessageSource, DelayedEventsConsumer]:
        s = self.settings
        topics = KafkaTopics.from_settings(s, endpoints.bootstrap_servers)
        await topics.ensure_async()
        await stack.enter_async_context(
            background(topics.keep_present, "topics", s.shutdown_timeout)
        )
        source = GuardedMessageSource(
            KafkaDelayedSource.from_settings(s, endpoints.bootstrap_servers),
            self.breakers["kafka_consumer"],
        )
        consumer = DelayedEventsConsumer(
            wired.service, source, clock=self.clock, on_dead_letter=self.metrics.dead_lettered
        )

        def ingress_stats() -> dict[str, Any]:
            stats = consumer.stats
            return {**stats.as_dict(), "stalled_seconds": stats.stalled_seconds()}

        self.metrics.watch_ingress(ingress_stats)
        stack.push_async_callback(consumer.stop)  # commits what is stored
        await consumer.start()
        return source, consumer

    def _breaker_changed(self, name: str, state: str) -> None:
        self.metrics.set_breaker_state(name, state)

    async def serve_forever(self) -> None:
        """Run until SIGINT/SIGTERM, then drain; a second signal exits at once."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_signal() -> None:
            if stop.is_set():
                log.warning("second signal: exiting now without draining")
                if self._running is not None:  # never leave our servers behind
                    self._running.endpoints.signal_stop()
                os._exit(130)
            log.info("signal received: draining (again to exit at once)")
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        await self.start()
        log.info(
            "delayline is running (node %s, roles %s)",
            self.settings.node_id,
            ",".join(sorted(self.roles)),
        )
        await stop.wait()
        await self.stop()


async def run_migrations_cli(settings: Settings, progress: Any = None) -> list[str]:
    """``delayline migrate``: apply the ClickHouse migrations once, with progress lines."""
    async with ClickHouseClient(
        settings.resolved_clickhouse_dsn, settings.clickhouse_database, settings.clickhouse_cluster
    ) as client:
        return await run_migrations(
            client, ttl_days=settings.execution_history_ttl_days, progress=progress
        )

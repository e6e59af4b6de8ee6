"""The composition root: reads settings once, starts what is embedded, wires adapters to services.

Nothing else in the package constructs adapters; nothing here holds scheduling logic.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from redis.asyncio import Redis

from delayline.adapters.clickhouse.analytics_store import ClickHouseAnalyticsStore
from delayline.adapters.clickhouse.client import ClickHouseClient
from delayline.adapters.clickhouse.lifecycle_store import ClickHouseLifecycleStore
from delayline.adapters.clickhouse.locks import RedisLease
from delayline.adapters.clickhouse.long_term_store import ClickHouseLongTermStore, DuePage
from delayline.adapters.clickhouse.migrations import run_migrations
from delayline.adapters.embedded import EmbeddedTansu, EmbeddedValkey, write_private
from delayline.adapters.encryption import PayloadCipher, UnreadableEvents
from delayline.adapters.kafka_consumer import KafkaDelayedSource
from delayline.adapters.kafka_producer import KafkaEventPublisher, producer_config
from delayline.adapters.kafka_topics import KafkaTopics
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.api.server import ApiServer, build_api_server
from delayline.clock import SystemClock
from delayline.domain.outcomes import ExecutionResult
from delayline.domain.routing import Tier
from delayline.firing_process import FiringProcess
from delayline.firing_runtime import FiringThread, LoopSink, redis_client
from delayline.health import DependencyHealth, MetricsSink, Probe
from delayline.metrics import Metrics
from delayline.ports import Clock, OutcomeSink
from delayline.resilience import CircuitBreaker, Guarded
from delayline.services.analytics import AnalyticsRecorder, ScheduleAnalyticsService
from delayline.services.ingress import DelayedEventsConsumer
from delayline.services.lifecycle import LifecycleRecorder, LifecycleService
from delayline.services.rotation import KeyRotation, RekeyableTier
from delayline.services.scheduler import SchedulerService
from delayline.services.sync import SyncService
from delayline.settings import Settings, is_loopback

log = logging.getLogger(__name__)

RUNTIME_FILE = "runtime.json"


@dataclass(frozen=True)
class Components:
    """Which long-running parts :class:`Application` starts."""

    dispatcher: bool = True
    sync: bool = True
    consumer: bool = True
    api: bool = True


class FiringDown(RuntimeError):
    """The dispatcher's process is not running (it is being started again)."""


class IngressStalled(RuntimeError):
    """The Kafka consumer cannot get past a batch (a store or the dead-letter topic down)."""


class UnreadablePayloads(RuntimeError):
    """Stored events whose payload the key ring cannot open (a key missing or wrong)."""


class DataDirInUseError(RuntimeError):
    """Another delayline process owns the data directory."""


class FanOutSink:
    """Hands every execution result to several sinks; one failing sink spoils none."""

    def __init__(self, *sinks: OutcomeSink) -> None:
        self._sinks = list(sinks)

    def add(self, sink: OutcomeSink) -> None:
        """Add one more sink."""
        self._sinks.append(sink)

    def record(self, result: ExecutionResult) -> None:
        """Give ``result`` to each sink."""
        for sink in self._sinks:
            try:
                sink.record(result)
            except Exception:
                log.exception("an outcome sink failed")


GAUGE_INTERVAL_SECONDS = 5.0


def far_count_interval(took_seconds: float) -> float:
    """Seconds until the next ClickHouse count for the pending gauge: every 5 s while it is
    cheap, else 20× what it took, so it never holds chDB's one query thread more than 5 % of
    the time (a count reads the whole table: ~1 s at 10M rows on a 2-core VM)."""
    return max(GAUGE_INTERVAL_SECONDS, 20 * took_seconds)


class Application:
    """Delayline with everything wired: ``async with Application(settings) as app``."""

    def __init__(
        self,
        settings: Settings,
        *,
        components: Components | None = None,
        clock: Clock | None = None,
        migrate: bool = True,
    ) -> None:
        self.settings = settings
        self.migrate = migrate
        self.components = components or Components()
        self.clock: Clock = clock or SystemClock()
        self.metrics = Metrics()
        self.sink = FanOutSink(MetricsSink(self.metrics))
        # Probes are cheap: retry at most every few seconds, so recovery is quick.
        self.breakers = {
            name: CircuitBreaker(name, max_reset_timeout=5.0, on_change=self._breaker_changed)
            for name in ("redis", "redis_firing", "clickhouse", "kafka_producer", "kafka_consumer")
        }
        for name in self.breakers:
            self.metrics.set_breaker_state(name, "closed")
        self.api_server: ApiServer | None = None
        self._valkey: EmbeddedValkey | None = None
        self._tansu: EmbeddedTansu | None = None
        self._redis: Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self.redis_url = ""
        self.bootstrap_servers = ""
        self.publisher: KafkaEventPublisher | None = None
        self.near: RedisNearTermStore | None = None
        self.firing: FiringThread | FiringProcess | None = None
        self.clickhouse: ClickHouseClient | None = None
        self.far: ClickHouseLongTermStore | None = None
        self.sync: SyncService[DuePage] | None = None
        self.analytics: ScheduleAnalyticsService | None = None
        self.lifecycle: LifecycleService | None = None
        self.consumer: DelayedEventsConsumer | None = None
        self.consumer_source: KafkaDelayedSource | None = None
        self._service: SchedulerService | None = None
        self._stopping = asyncio.Event()
        self._data_dir_lock: IO[str] | None = None
        ring = settings.key_ring()
        self.cipher = (
            None
            if ring is None
            else PayloadCipher(ring, UnreadableEvents(on_found=self.metrics.undecryptable))
        )
        self.rotation: KeyRotation | None = None

    @property
    def service(self) -> SchedulerService:
        """The scheduler service (after :meth:`start`)."""
        if self._service is None:
            raise RuntimeError("the application is not started: call `await start()` first")
        return self._service

    async def __aenter__(self) -> Application:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start embedded servers if no URLs are set, connect, and start the loops."""
        if self._started:
            return
        self._started = True
        try:
            await self._start_all()
        except BaseException:
            await self.stop()  # never leave embedded servers behind a failed start
            raise

    async def _start_all(self) -> None:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_data_dir()
        await self._start_redis()
        await self._start_kafka()
        assert self._redis is not None
        near = RedisNearTermStore(
            self._redis,
            prefix=s.redis_key_prefix,
            result_ttl_seconds=s.result_ttl_seconds,
            cipher=self.cipher,
        )
        # Guarded adapters keep their type's interface; outages become DependencyUnavailable.
        self.near = cast(RedisNearTermStore, Guarded(near, self.breakers["redis"]))
        await self._start_clickhouse()
        assert self.far is not None
        assert self.clickhouse is not None
        lifecycle_store = ClickHouseLifecycleStore(self.clickhouse, self.cipher)
        self.lifecycle = LifecycleService(
            # reads answer 503 while ClickHouse is down; writes wait in the recorder's buffer
            cast(ClickHouseLifecycleStore, Guarded(lifecycle_store, self.breakers["clickhouse"])),
            LifecycleRecorder(
                lifecycle_store,
                batch_size=s.analytics_batch_size,
                flush_interval=s.analytics_flush_interval,
            ),
        )
        await self.lifecycle.start()
        lifecycle = self.lifecycle
        if self.cipher is not None:
            tiers: dict[str, RekeyableTier] = {"redis": self.near, "clickhouse": self.far}
            self.rotation = KeyRotation(tiers, self.cipher.ring.current)
        self.sync = SyncService(
            self.near,
            self.far,
            RedisLease(self._redis, f"{{{s.redis_key_prefix}}}:sync-lock", ttl=60),
            self.clock,
            transfer_horizon_seconds=s.transfer_horizon_seconds,
            retention_days=s.execution_history_ttl_days,
            on_run=self.metrics.sync_run,
            on_moved=lambda events: lifecycle.moved(events, self.clock.now(), s.node_id),
        )
        self._service = SchedulerService(
            self.near,
            self.clock,
            immediate_horizon_seconds=s.immediate_horizon_seconds,
            max_body_bytes=s.max_body_bytes,
            rules=s.event_rules(),
            default_max_delay_seconds=s.default_max_delay_seconds,
            far=self.far,
            sync=self.sync,
            on_scheduled=lambda tier, source, n: self.metrics.scheduled(tier.value, source, n),
            lifecycle=self.lifecycle,
        )
        await self._start_analytics()
        if self.components.dispatcher:
            await self._start_dispatcher()
        if self.components.consumer:
            await self._start_consumer()
        self._tasks.append(asyncio.create_task(self._refresh_gauges(), name="gauges"))
        if self.components.api:
            await self._start_api()
        if self.components.sync:
            self._tasks.append(
                asyncio.create_task(
                    self.sync.run_periodically(
                        s.clickhouse_sync_interval, s.cleanup_interval, self._stopping
                    ),
                    name="sync",
                )
            )
        self._write_runtime_file()

    async def _start_redis(self) -> None:
        s = self.settings
        if s.redis_url is None:
            self._valkey = EmbeddedValkey(s.data_dir / "valkey", appendfsync=s.redis_appendfsync)
            self.redis_url = await asyncio.to_thread(self._valkey.start)
        else:
            self.redis_url = s.redis_url.get_secret_value()
        # The API, ingress and sync share this pool; the firing path has its own.
        self._redis = redis_client(
            self.redis_url,
            max_connections=s.redis_max_connections,
            pool_timeout=s.redis_pool_timeout,
            command_timeout=s.redis_command_timeout,
        )
        await self._redis.ping()

    def _lock_data_dir(self) -> None:
        """One service per data directory: its embedded Valkey AOF and chDB folder are not
        shareable. Checked before anything is started, so nothing is touched."""
        path = self.settings.data_dir / ".lock"
        handle = path.open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise DataDirInUseError(
                f"the data directory {self.settings.data_dir.resolve()} is in use by another "
                "delayline process; stop it, or give this one its own SCHEDULES_DATA_DIR"
            ) from None
        self._data_dir_lock = handle

    async def _start_clickhouse(self) -> None:
        s = self.settings
        self.clickhouse = ClickHouseClient(
            s.resolved_clickhouse_dsn, s.clickhouse_database, s.clickhouse_cluster
        )
        await self.clickhouse.start()
        if self.migrate:
            await run_migrations(
                self.clickhouse, ttl_days=s.execution_history_ttl_days, progress=log.info
            )
        far = ClickHouseLongTermStore(self.clickhouse, self.cipher, self.clock)
        self.far = cast(ClickHouseLongTermStore, Guarded(far, self.breakers["clickhouse"]))

    async def _start_analytics(self) -> None:
        s = self.settings
        assert self.clickhouse is not None
        store = ClickHouseAnalyticsStore(self.clickhouse)
        recorder = AnalyticsRecorder(
            store,
            batch_size=s.analytics_batch_size,
            flush_interval=s.analytics_flush_interval,
            enabled=s.analytics_enabled,
        )
        self.analytics = ScheduleAnalyticsService(
            store, recorder=recorder, enabled=s.analytics_enabled
        )
        await self.analytics.initialize()
        if s.analytics_enabled:
            self.sink.add(recorder)

    async def _start_consumer(self) -> None:
        s = self.settings
        topics = KafkaTopics.from_settings(s, self.bootstrap_servers)
        await topics.ensure_async()
        self._tasks.append(asyncio.create_task(topics.keep_present(self._stopping), name="topics"))
        source = cast(
            KafkaDelayedSource,
            Guarded(
                KafkaDelayedSource.from_settings(s, self.bootstrap_servers),
                self.breakers["kafka_consumer"],
            ),
        )
        self.consumer_source = source
        self.consumer = DelayedEventsConsumer(
            self.service, source, clock=self.clock, on_dead_letter=self.metrics.dead_lettered
        )
        self.metrics.watch_ingress(self._ingress_stats)
        await self.consumer.start()

    def _ingress_stats(self) -> dict[str, Any] | None:
        if self.consumer is None:
            return None
        stats = self.consumer.stats
        return {**stats.as_dict(), "stalled_seconds": stats.stalled_seconds()}

    def health(self) -> DependencyHealth:
        """The health check over this application's dependencies."""

        async def redis_ok() -> object:
            assert self._redis is not None
            # A write, not a ping: Valkey refuses writes (MISCONF) when it cannot persist them.
            key = f"{{{self.settings.redis_key_prefix}}}:health"
            return await self._redis.set(key, self.settings.node_id, px=60_000)

        async def clickhouse_ok() -> object:
            assert self.clickhouse is not None
            return await self.clickhouse.query("SELECT 1")

        async def kafka_ok() -> object:
            firing = self.firing
            publisher = firing.publisher if isinstance(firing, FiringThread) else self.publisher
            assert publisher is not None
            return await publisher.ping(timeout=1.5)

        async def ingress_ok() -> object:
            stats = self.consumer.stats if self.consumer is not None else None
            if stats is not None and stats.stalled_since is not None:
                raise IngressStalled(
                    f"a batch has waited {stats.stalled_seconds():.1f} s "
                    f"({stats.retries} retries in all): {stats.last_error}"
                )
            return True

        async def encryption_ok() -> object:
            assert self.near is not None and self.cipher is not None
            parked = await self.near.parked()
            seen = self.cipher.unreadable.snapshot()
            failed = sum(seen["found"].get("clickhouse", {}).values())
            if parked or failed:
                raise UnreadablePayloads(
                    f"{parked} event(s) parked in Redis, {failed} failed in ClickHouse since "
                    f"start; last: {'; '.join(seen['last_reason'].values()) or '?'} "
                    "(restore the key and run `delayline rotate-keys`)"
                )
            return True

        async def firing_ok() -> object:
            assert self.firing is not None
            if not self.firing.running:
                raise FiringDown(f"the dispatcher is not running ({self.settings.firing_runtime})")
            return True

        probes: dict[str, Probe] = {
            "redis": redis_ok,
            "clickhouse": clickhouse_ok,
            "kafka": kafka_ok,
        }
        if self.cipher is not None:
            probes["encryption"] = encryption_ok
        if self.firing is not None:
            probes["firing"] = firing_ok
        if self.components.consumer:
            probes["ingress"] = ingress_ok
        return DependencyHealth(
            probes,
            breakers=lambda: {
                **{n: b.state.value for n, b in self.breakers.items()},
                **(self.firing.breaker_states if self.firing is not None else {}),
            },
        )

    def _breaker_changed(self, name: str, state: str) -> None:
        self.metrics.set_breaker_state(name, state)

    async def _start_api(self) -> None:
        s = self.settings
        if not s.api_keys and not is_loopback(s.api_host):
            log.warning(
                "SECURITY: the HTTP API on %s serves everyone on the network WITHOUT "
                "AUTHENTICATION (SCHEDULES_API_ALLOW_UNAUTHENTICATED=true); set "
                "SCHEDULES_API_KEYS to require a key",
                s.api_host,
            )
        analytics = self.analytics if s.analytics_enabled else None
        self.api_server = build_api_server(
            s,
            self.service,
            analytics=analytics,
            health=self.health(),
            metrics=self.metrics,
            rotation=self.rotation,
        )
        self._tasks.append(asyncio.create_task(self.api_server.serve(), name="api"))
        for _ in range(500):  # wait until it listens, so start() returning means "serving"
            if self.api_server.started or self._tasks[-1].done():
                break
            await asyncio.sleep(0.01)
        if self._tasks[-1].done():
            raise RuntimeError(f"the HTTP API could not listen on {s.api_host}:{s.api_port}")
        log.info("HTTP API on http://%s:%d (docs at /docs)", s.api_host, s.api_port)

    async def _refresh_gauges(self) -> None:
        far_due = 0.0  # monotonic time of the next ClickHouse count
        while not self._stopping.is_set():
            try:
                if self.near is not None:
                    counts = await self.near.counts()
                    self.metrics.set_pending(Tier.REDIS.value, counts["pending"])
                if self.far is not None and time.monotonic() >= far_due:
                    started = time.monotonic()
                    far_counts = await self.far.counts()
                    self.metrics.set_pending(Tier.CLICKHOUSE.value, far_counts["pending"])
                    far_due = started + far_count_interval(time.monotonic() - started)
                if self.firing is not None:
                    self.metrics.set_claims_in_flight(self.firing.claims_in_flight)
                lag = self.consumer_source.lag if self.consumer_source is not None else None
                if lag is not None:
                    self.metrics.set_consumer_lag(lag)
            except Exception as exc:
                log.debug("gauge refresh failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), GAUGE_INTERVAL_SECONDS)

    async def _start_kafka(self) -> None:
        s = self.settings
        if s.kafka_bootstrap_servers is None:
            self._tansu = EmbeddedTansu(log_path=s.data_dir / "tansu.log")
            self.bootstrap_servers = await asyncio.to_thread(self._tansu.start)
        else:
            self.bootstrap_servers = s.kafka_bootstrap_servers
        if self.components.dispatcher and s.firing_runtime == "thread":
            return  # the firing thread has the producer
        self.publisher = KafkaEventPublisher(  # for the health check only
            producer_config(
                self.bootstrap_servers,
                linger_ms=s.kafka_linger_ms,
                lease_seconds=s.lease_seconds,
                extra=s.resolved_kafka_client_options,
            )
        )
        await self.publisher.start()

    async def _start_dispatcher(self) -> None:
        lifecycle = self.lifecycle.recorder if self.lifecycle else None
        if self.settings.firing_runtime == "process":
            if not isinstance(self.clock, SystemClock):
                raise ValueError("a clock of its own needs SCHEDULES_FIRING_RUNTIME=thread")
            self.firing = FiringProcess(
                self.settings,
                redis_url=self.redis_url,
                bootstrap_servers=self.bootstrap_servers,
                sink=self.sink,  # fed on this loop
                lifecycle=lifecycle,
                on_breaker_change=self._breaker_changed,
                on_restart=self.metrics.firing_process_restarted,
            )
            await self.firing.start()
            return
        self.firing = FiringThread(
            self.settings,
            redis_url=self.redis_url,
            bootstrap_servers=self.bootstrap_servers,
            sink=LoopSink(self.sink, asyncio.get_running_loop()),
            clock=self.clock,
            redis_breaker=self.breakers["redis_firing"],
            producer_breaker=self.breakers["kafka_producer"],
            lifecycle=lifecycle,
            cipher=self.cipher,
        )
        await self.firing.start()

    def _write_runtime_file(self) -> None:
        """Tell the CLI in another terminal where the embedded servers are: no secret, and
        readable by this user only. The embedded Valkey's password is in its own 0600 file."""
        info: dict[str, Any] = {"bootstrap_servers": self.bootstrap_servers}
        if self._valkey is not None:
            info["redis_url"] = self._valkey.address
            info["redis_password_file"] = str(self._valkey.password_file)
        write_private(self.settings.data_dir / RUNTIME_FILE, json.dumps(info))

    async def stop(self) -> None:
        """Drain: stop claiming, finish claimed batches, flush, then stop embedded servers."""
        if not self._started:
            return
        self._started = False
        self._stopping.set()
        if self.api_server is not None:
            self.api_server.should_exit = True
        firing_stopped = (
            asyncio.create_task(self.firing.stop(self.settings.shutdown_timeout))
            if self.firing is not None
            else None
        )
        if self.rotation is not None:
            await self.rotation.stop()
        if self._tasks:
            done, pending = await asyncio.wait(self._tasks, timeout=self.settings.shutdown_timeout)
            for task in pending:
                task.cancel()
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error("task %s failed", task.get_name(), exc_info=task.exception())
            self._tasks.clear()
        if firing_stopped is not None:
            await firing_stopped  # claimed batches finished, acknowledged and flushed
        if self.consumer is not None:
            await self.consumer.stop()  # commits what is stored
        if self.publisher is not None:
            await self.publisher.stop(self.settings.shutdown_timeout)
        if self.analytics is not None:
            await self.analytics.close()  # flushes the last results
        if self.lifecycle is not None:
            await self.lifecycle.close()  # flushes the last transitions
        if self.clickhouse is not None:
            await self.clickhouse.stop()
        if self._redis is not None:
            await self._redis.aclose()
        if self._tansu is not None:
            await asyncio.to_thread(self._tansu.stop)
        if self._valkey is not None:
            await asyncio.to_thread(self._valkey.stop)
        if self._data_dir_lock is not None:
            with contextlib.suppress(OSError):
                (self.settings.data_dir / RUNTIME_FILE).unlink()
            self._data_dir_lock.close()  # releases the lock
            self._data_dir_lock = None

    async def serve_forever(self) -> None:
        """Run until SIGINT/SIGTERM, then drain; a second signal exits at once."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_signal() -> None:
            if stop.is_set():
                log.warning("second signal: exiting now without draining")
                for server in (self._tansu, self._valkey):  # never leave our servers behind
                    if server is not None:
                        server.signal_stop()
                os._exit(130)
            log.info("signal received: draining (again to exit at once)")
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        await self.start()
        log.info("delayline is running (node %s)", self.settings.node_id)
        await stop.wait()
        await self.stop()


async def run_migrations_cli(settings: Settings, progress: Any = None) -> list[str]:
    """``delayline migrate``: apply the ClickHouse migrations once, with progress lines."""
    client = ClickHouseClient(
        settings.resolved_clickhouse_dsn, settings.clickhouse_database, settings.clickhouse_cluster
    )
    await client.start()
    try:
        return await run_migrations(
            client, ttl_days=settings.execution_history_ttl_days, progress=progress
        )
    finally:
        await client.stop()


def read_runtime_file(data_dir: Path) -> dict[str, Any]:
    """What a running service wrote about its embedded servers (empty if none)."""
    try:
        return dict(json.loads((data_dir / RUNTIME_FILE).read_text()))
    except (OSError, ValueError):
        return {}

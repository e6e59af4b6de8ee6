"""The firing path in a thread of its own: its own event loop, Redis client, breakers and Kafka
producer, so no amount of API or ingress work on the main loop can delay a due event.

Execution results cross back to the main loop through :class:`LoopSink`, so the sinks behind
it (metrics, the analytics recorder) only ever run on the loop that owns them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from delayline.adapters.encryption import PayloadCipher
from delayline.adapters.guarded import GuardedNearTermStore, GuardedPublisher
from delayline.adapters.kafka_producer import KafkaEventPublisher, producer_config
from delayline.adapters.redis_connect import RedisServers, redis_client, redis_servers
from delayline.adapters.redis_ownership import RedisShardLeases
from delayline.adapters.redis_sharded import ShardedNearTermStore
from delayline.domain.outcomes import ExecutionResult
from delayline.ports import Clock, LifecycleSink, OutcomeSink
from delayline.resilience import CircuitBreaker
from delayline.services.dispatcher import Dispatcher, DispatcherConfig
from delayline.services.ownership import ShardOwnership
from delayline.settings import Settings

log = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 30.0
OWNERSHIP_REPORT_SECONDS = 1.0

__all__ = ["redis_client"]  # re-exported: callers build a one-server client from here


def near_term_store(
    s: Settings, servers: RedisServers, cipher: PayloadCipher | None
) -> ShardedNearTermStore:
    """The near-term tier over ``SCHEDULES_REDIS_SHARDS`` shards on ``servers``."""
    return ShardedNearTermStore(
        servers,
        prefix=s.redis_key_prefix,
        result_ttl_seconds=s.result_ttl_seconds,
        cipher=cipher,
        shards=s.redis_shards,
    )


def firing_clients(
    s: Settings, redis_url: str, bootstrap_servers: str
) -> tuple[RedisServers, KafkaEventPublisher]:
    """The firing path's own Redis clients (any URL form ``redis_servers`` takes) and Kafka
    producer (not started), whichever runtime runs it."""
    client = redis_servers(
        redis_url,
        max_connections=firing_pool_size(s.max_inflight_batches),
        pool_timeout=s.redis_pool_timeout,
    )
    publisher = KafkaEventPublisher(
        producer_config(
            bootstrap_servers,
            linger_ms=s.kafka_linger_ms,
            lease_seconds=s.lease_seconds,
            extra=s.resolved_kafka_client_options,
        )
    )
    return client, publisher


def shard_ownership(s: Settings, servers: RedisServers, dispatcher: Dispatcher) -> ShardOwnership:
    """This runtime's share of the shards, as node ``s.node_id``, under leases of
    ``SCHEDULES_LEASE_SECONDS``; a shard handed back waits for ``dispatcher``'s claims there."""
    return ShardOwnership(
        RedisShardLeases(servers.control, s.redis_key_prefix),
        s.node_id,
        s.redis_shards,
        lease_seconds=s.lease_seconds,
        on_hand_back=dispatcher.hand_back,
    )


async def fire_owned_shards(
    dispatcher: Dispatcher,
    ownership: ShardOwnership,
    report: Callable[[dict[str, Any]], None],
) -> None:
    """Run the dispatcher over the shards ``ownership`` holds until it stops (drained), then
    leave: every lease released at once, so the other nodes take the shards on their next tick.
    ``report`` gets the ownership's status every second and once more at the end."""
    stopping = asyncio.Event()

    async def keep_reporting() -> None:
        while not stopping.is_set():
            report(ownership.status())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), OWNERSHIP_REPORT_SECONDS)

    keeping = asyncio.create_task(ownership.run(stopping), name="shard-ownership")
    reporting = asyncio.create_task(keep_reporting(), name="shard-ownership-report")
    try:
        await dispatcher.run()
    finally:
        stopping.set()
        await asyncio.gather(keeping, reporting, return_exceptions=True)
        await ownership.release_all()
        report(ownership.status())


async def first_shards(ownership: ShardOwnership) -> None:
    """Take this node's first shards before it reports ready (a lone node then fires at once);
    a failure here is retried by the ownership's own loop."""
    try:
        await ownership.rebalance_once()
    except Exception as exc:
        log.warning("taking the first shards failed (retried): %s", exc)


def firing_pool_size(max_inflight_batches: int) -> int:
    """Connections the firing path can use at once: a claim and an ack or retry per in-flight
    batch, the reaper, and the wake-up subscription."""
    return 2 * max_inflight_batches + 2


class LoopSink:
    """An :class:`OutcomeSink` callable from any thread: results are buffered and handed, a
    batch per loop turn, to ``sink`` on ``loop`` (the loop that owns ``sink``).

    No lock: ``deque.append`` and ``popleft`` are atomic, so the firing thread never waits
    for the loop's thread (which, busy with other work, may not give the GIL back for a
    while) to let go of one."""

    def __init__(self, sink: OutcomeSink, loop: asyncio.AbstractEventLoop) -> None:
        self._sink = sink
        self._loop = loop
        self._buffer: deque[ExecutionResult] = deque()
        self._scheduled = False

    def record(self, result: ExecutionResult) -> None:
        """Buffer ``result``; the first since the last hand-over schedules the next."""
        self._buffer.append(result)
        if self._scheduled:
            return
        self._scheduled = True
        with contextlib.suppress(RuntimeError):  # the main loop is closed: shutting down
            self._loop.call_soon_threadsafe(self._hand_over)

    def _hand_over(self) -> None:
        # Cleared before taking the batch: a result added after the count below schedules
        # another hand-over (at worst an empty one).
        self._scheduled = False
        buffer = self._buffer
        batch = [buffer.popleft() for _ in range(len(buffer))]
        for result in batch:
            self._sink.record(result)


class FiringThread:
    """Runs the :class:`Dispatcher` (claims, wake-ups, reaper, publishing) on its own loop."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis_url: str,
        bootstrap_servers: str,
        sink: OutcomeSink,
        clock: Clock,
        redis_breaker: CircuitBreaker,
        producer_breaker: CircuitBreaker,
        lifecycle: LifecycleSink | None = None,
        cipher: PayloadCipher | None = None,
    ) -> None:
        self._settings = settings
        self._cipher = cipher
        self._lifecycle = lifecycle
        self._redis_url = redis_url
        self._bootstrap_servers = bootstrap_servers
        self._sink = sink
        self._clock = clock
        self._redis_breaker = redis_breaker
        self._producer_breaker = producer_breaker
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.dispatcher: Dispatcher | None = None
        self.publisher: KafkaEventPublisher | None = None
        self.ownership: list[dict[str, Any]] = []
        """The status of this runtime's shard ownership (one node), refreshed every second."""

    @property
    def claims_in_flight(self) -> int:
        """Batches claimed and not yet finished."""
        return self.dispatcher.claims_in_flight if self.dispatcher is not None else 0

    @property
    def running(self) -> bool:
        """Whether the thread is up and firing."""
        return self.dispatcher is not None and self._thread is not None and self._thread.is_alive()

    @property
    def breaker_states(self) -> dict[str, str]:
        """Nothing to mirror: the breakers given to this runtime are the service's own."""
        return {}

    async def start(self) -> None:
        """Start the thread; returns once it fires (raises what stopped it from starting)."""
        self._thread = threading.Thread(target=self._main, name="delayline-firing", daemon=True)
        self._thread.start()
        await asyncio.to_thread(self._ready.wait, START_TIMEOUT_SECONDS)
        if self._error is not None:
            raise RuntimeError(f"the firing thread failed to start: {self._error}") from (
                self._error
            )
        if not self._ready.is_set():
            raise RuntimeError("the firing thread did not start in time")

    async def stop(self, timeout: float) -> None:
        """Drain: stop claiming, finish claimed batches, flush the producer, end the thread."""
        loop, dispatcher, thread = self._loop, self.dispatcher, self._thread
        if loop is not None and dispatcher is not None:
            with contextlib.suppress(RuntimeError):  # its loop already ended
                loop.call_soon_threadsafe(dispatcher.stop)
        if thread is not None:
            await asyncio.to_thread(thread.join, timeout + 5)
            if thread.is_alive():
                log.error("the firing thread did not finish within %.0f s", timeout + 5)
        await asyncio.sleep(0)  # the last results handed over reach their sinks

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported to start(), or logged once running
            if not self._ready.is_set():
                self._error = exc
                self._ready.set()
            else:
                log.exception("the firing thread failed")

    def _report(self, status: dict[str, Any]) -> None:
        self.ownership = [status]  # one assignment: read safely from the service's thread

    async def _run(self) -> None:
        s = self._settings
        self._loop = asyncio.get_running_loop()
        client, publisher = firing_clients(s, self._redis_url, self._bootstrap_servers)
        try:
            await client.ping()
            await publisher.start()
            self.publisher = publisher
            near = near_term_store(s, client, self._cipher)

            def owned() -> frozenset[int]:  # the ownership below needs the dispatcher first
                return ownership.owned()

            dispatcher = Dispatcher(
                GuardedNearTermStore(near, self._redis_breaker),
                GuardedPublisher(publisher, self._producer_breaker),
                self._sink,
                self._clock,
                dispatcher_config(s),
                lifecycle=self._lifecycle,
                owned_shards=owned,
            )
            ownership = shard_ownership(s, client, dispatcher)
            await first_shards(ownership)
            self.dispatcher = dispatcher
            self._ready.set()
            await fire_owned_shards(dispatcher, ownership, self._report)
        finally:
            await publisher.stop(s.shutdown_timeout)
            await client.aclose()


def dispatcher_config(s: Settings) -> DispatcherConfig:
    """The dispatcher's tunables from the settings."""
    return DispatcherConfig(
        max_sleep_seconds=s.redis_processing_interval,
        claim_batch_size=s.claim_batch_size,
        claim_batch_min_size=s.claim_batch_min_size,
        max_inflight_batches=s.max_inflight_batches,
        lease_seconds=s.lease_seconds,
        max_publish_attempts=s.max_publish_attempts,
        retry_backoff_initial=s.retry_backoff_initial,
        retry_backoff_max=s.retry_backoff_max,
        node_id=s.node_id,
        claim_lookahead_seconds=s.claim_lookahead_seconds,
    )

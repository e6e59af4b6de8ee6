"""Health of the dependencies, and the metrics fed from the running application."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from delayline.adapters.redis_ownership import RedisShardLeases
from delayline.domain.outcomes import ExecutionResult
from delayline.errors import is_disk_full
from delayline.firing_runtime import FiringThread
from delayline.metrics import Metrics
from delayline.ports import OutcomeSink

if TYPE_CHECKING:
    from delayline.adapters.encryption import PayloadCipher
    from delayline.adapters.kafka_producer import KafkaEventPublisher
    from delayline.firing import Firing
    from delayline.resilience import CircuitBreaker
    from delayline.services.ingress import DelayedEventsConsumer
    from delayline.settings import Settings
    from delayline.wiring import Wired

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[object]]


class FiringDown(RuntimeError):
    """The dispatcher's process is not running (it is being started again)."""


class IngressStalled(RuntimeError):
    """The Kafka consumer cannot get past a batch (a store or the dead-letter topic down)."""


class UnreadablePayloads(RuntimeError):
    """Stored events whose payload the key ring cannot open (a key missing or wrong)."""


class RunningFlag(Protocol):
    """A part that knows whether it runs (the dispatcher's thread or process)."""

    @property
    def running(self) -> bool:
        """Whether it runs now."""
        ...


class IngressProgress(Protocol):
    """What the ingress probe reads of the consumer's stats."""

    retries: int
    stalled_since: float | None
    last_error: str | None

    def stalled_seconds(self, now: float | None = None) -> float:
        """How long the current batch has waited."""
        ...


def firing_probe(firing: RunningFlag, runtime: str) -> Probe:
    """Down while the dispatcher is not running (being restarted)."""

    async def probe() -> object:
        if not firing.running:
            raise FiringDown(f"the dispatcher is not running ({runtime})")
        return True

    return probe


def ingress_probe(stats: Callable[[], IngressProgress]) -> Probe:
    """Down while the Kafka consumer cannot get past a batch."""

    async def probe() -> object:
        now = stats()
        if now.stalled_since is not None:
            raise IngressStalled(
                f"a batch has waited {now.stalled_seconds():.1f} s "
                f"({now.retries} retries in all): {now.last_error}"
            )
        return True

    return probe


def encryption_probe(
    parked: Callable[[], Awaitable[int]], unreadable: Callable[[], dict[str, Any]]
) -> Probe:
    """Down while stored events cannot be opened with the key ring."""

    async def probe() -> object:
        parked_now = await parked()
        seen = unreadable()
        failed = sum(seen["found"].get("clickhouse", {}).values())
        if parked_now or failed:
            raise UnreadablePayloads(
                f"{parked_now} event(s) parked in Redis, {failed} failed in ClickHouse since "
                f"start; last: {'; '.join(seen['last_reason'].values()) or '?'} "
                "(restore the key and run `delayline rotate-keys`)"
            )
        return True

    return probe


Holders = Callable[[], Awaitable[dict[int, tuple[str, int]]]]


def shards_report(
    shard_count: int, holders: Holders, nodes: Callable[[], list[dict[str, Any]]]
) -> Callable[[], Awaitable[dict[str, Any]]]:
    """The ``shards`` section of the health report: who holds each shard's lease now (any node
    of the deployment), and the ownership of this process's firing nodes."""

    async def report() -> dict[str, Any]:
        held = await holders()
        return {
            "count": shard_count,
            "holders": {
                str(shard): f"{node}:{token}" if shard in held else None
                for shard in range(shard_count)
                for node, token in [held.get(shard, ("", 0))]
            },
            "this_process": nodes(),
        }

    return report


class MetricsSink:
    """An outcome sink counting fired events and their lateness."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def record(self, result: ExecutionResult) -> None:
        """Count one outcome."""
        self._metrics.fired(result.outcome.value, result.delay_seconds)


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


class DependencyHealth:
    """Probes each dependency with a timeout; serving while the near-term store answers.

    ClickHouse down: degraded (near-term scheduling and firing go on). Kafka down: degraded
    (due events wait and fire when it returns). Redis down: not serving. A store whose disk is
    full (it refuses writes): "full", degraded, with the reason.
    """

    def __init__(
        self,
        probes: dict[str, Probe],
        *,
        required: frozenset[str] = frozenset({"redis"}),
        breakers: Callable[[], dict[str, str]] | None = None,
        shards: Callable[[], Awaitable[dict[str, Any]]] | None = None,
        timeout: float = 2.0,
    ) -> None:
        self._probes = probes
        self._shards = shards
        self._required = required
        self._breakers = breakers or dict
        self._timeout = timeout

    async def _probe(self, name: str, probe: Probe) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                ok = await probe()
        except Exception as exc:
            # A full disk leaves reads working: degraded, with the reason, not down.
            status = "full" if is_disk_full(exc) else "down"
            return {"status": status, "error": f"{type(exc).__name__}: {exc}"[:300]}
        latency_ms = round((time.perf_counter() - started) * 1000, 2)
        return {"status": "up" if ok is not False else "down", "latency_ms": latency_ms}

    async def check(self) -> dict[str, Any]:
        """Each dependency's state, each breaker's, and ``serving``."""
        names = list(self._probes)
        results = await asyncio.gather(*(self._probe(n, self._probes[n]) for n in names))
        deps = dict(zip(names, results, strict=True))
        serving = all(deps[n]["status"] in {"up", "full"} for n in self._required if n in deps)
        healthy = all(d["status"] == "up" for d in deps.values())
        report: dict[str, Any] = {
            "status": "ok" if healthy else ("degraded" if serving else "down"),
            "serving": serving,
            "dependencies": deps,
            "breakers": self._breakers(),
        }
        if self._shards is not None:
            try:
                async with asyncio.timeout(self._timeout):
                    report["shards"] = await self._shards()
            except Exception as exc:  # the dependencies above say why
                report["shards"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        return report


def process_health(
    settings: Settings,
    wired: Wired,
    breakers: Mapping[str, CircuitBreaker],
    *,
    firing: Firing | None,
    consumer: DelayedEventsConsumer | None,
    publisher: KafkaEventPublisher | None,
    cipher: PayloadCipher | None,
    uses_kafka: bool,
) -> DependencyHealth:
    """The health check over what this process runs: its stores, Kafka when a role uses it,
    encryption, firing, ingress, breakers and the shards' holders."""
    s = settings

    async def redis_ok() -> object:
        # A write, not a ping: Valkey refuses writes (MISCONF) when it cannot persist them.
        return await wired.redis.set(f"{{{s.redis_key_prefix}}}:health", s.node_id, px=60_000)

    async def clickhouse_ok() -> object:
        return await wired.clickhouse.query("SELECT 1")

    async def kafka_ok() -> object:
        producer = firing.publisher if isinstance(firing, FiringThread) else publisher
        return producer is not None and await producer.ping(timeout=1.5)

    probes: dict[str, Probe] = {"redis": redis_ok, "clickhouse": clickhouse_ok}
    if uses_kafka:
        probes["kafka"] = kafka_ok
    if cipher is not None:
        probes["encryption"] = encryption_probe(wired.near.parked, cipher.unreadable.snapshot)
    if firing is not None:
        runtime = f"{s.workers} workers" if s.workers > 1 else s.firing_runtime
        probes["firing"] = firing_probe(firing, runtime)
    if consumer is not None:
        probes["ingress"] = ingress_probe(lambda: consumer.stats)
    leases = RedisShardLeases(wired.redis, s.redis_key_prefix)
    return DependencyHealth(
        probes,
        breakers=lambda: {
            **{n: b.state.value for n, b in breakers.items()},
            **(firing.breaker_states if firing is not None else {}),
        },
        shards=shards_report(
            s.redis_shards,
            lambda: leases.holders(range(s.redis_shards)),
            lambda: firing.ownership if firing is not None else [],
        ),
    )

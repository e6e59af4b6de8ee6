"""Prometheus metrics: one object holding its own registry, injected wherever something is counted.

Every name starts with ``delayline_`` and ends with its unit (``_seconds``, ``_messages``,
``_total`` for counters). Labels only take values from small fixed sets: a value outside its set
is counted as ``other`` instead of raising, so a metrics call can never break the firing path nor
create unbounded series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

NAMESPACE = "delayline"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""Content type of :meth:`Metrics.render` (the Prometheus text format 0.0.4)."""

TIERS = ("redis", "clickhouse")
SOURCES = ("api", "http", "kafka", "sync")
OUTCOMES = ("success", "error", "timeout", "skipped")
SYNC_RESULTS = ("success", "error")
BREAKER_STATES = {"closed": 0, "half-open": 1, "half_open": 1, "open": 2}
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
AUTH_FAILURE_REASONS = ("missing", "invalid", "forbidden")
OTHER = "other"

# Firing lateness: fine below 10 ms (where the dispatcher should live), coarse up to a minute
# (where polling peers live), so both regressions and outliers show.
LATENESS_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
SYNC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


INGRESS_COUNTERS = {
    "consumed": "Messages read from the delayed-events topic.",
    "scheduled": "Messages that scheduled their id (new, or again after a cancel or firing).",
    "replaced": "Messages that replaced a pending or firing version of their id.",
    "duplicates": "Messages whose version (or a newer one) was already stored: nothing changed.",
    "cancelled": "Tombstones that cancelled a pending event.",
    "cancel_missed": "Tombstones naming no pending event (unknown, fired or cancelled).",
    "dead_lettered": "Messages sent to the dead-letter topic.",
    "dead_letter_refused": "Rejected messages whose dead letter the broker refused for good.",
    "batches": "Batches of the delayed-events topic processed.",
    "commit_failures": "Offset commits that failed (those messages are redelivered).",
    "pauses": "Times consumption paused because a store was unavailable.",
    "retries": "Retries of a batch that could not be processed.",
}
"""``DelayedEventsConsumer.stats`` counters exposed as ``delayline_ingress_<name>_total``."""


def _pick(value: object, allowed: Iterable[str]) -> str:
    """``value`` as a label if it is one of ``allowed``, else ``other`` (bounded cardinality)."""
    text = str(value)
    return text if text in allowed else OTHER


class Metrics:
    """Every metric of the service, in its own :class:`CollectorRegistry` (no global state)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        ns = NAMESPACE
        self.events_scheduled = Counter(
            "events_scheduled",
            "Events accepted for scheduling, by storage tier and ingress source.",
            ["tier", "source"],
            namespace=ns,
            registry=reg,
        )
        self.events_fired = Counter(
            "events_fired",
            "Events whose due time came, by final outcome.",
            ["outcome"],
            namespace=ns,
            registry=reg,
        )
        self.firing_lateness = Histogram(
            "firing_lateness_seconds",
            "Seconds between an event's due time and the broker's ack of its message.",
            namespace=ns,
            registry=reg,
            buckets=LATENESS_BUCKETS,
        )
        self.pending_events = Gauge(
            "pending_events", "Events waiting, by tier.", ["tier"], namespace=ns, registry=reg
        )
        self.claims_in_flight = Gauge(
            "claims_in_flight",
            "Events claimed by this node's dispatcher and not yet acknowledged.",
            namespace=ns,
            registry=reg,
        )
        self.sync_runs = Counter(
            "sync_runs", "ClickHouse to Redis sync runs.", ["result"], namespace=ns, registry=reg
        )
        self.sync_duration = Histogram(
            "sync_duration_seconds",
            "Duration of one ClickHouse to Redis sync run.",
            namespace=ns,
            registry=reg,
            buckets=SYNC_BUCKETS,
        )
        self.sync_moved_events = Counter(
            "sync_moved_events",
            "Events moved from ClickHouse into Redis by the sync.",
            namespace=ns,
            registry=reg,
        )
        self.consumer_lag = Gauge(
            "consumer_lag_messages",
            "Messages of the delayed-events topic not yet consumed by this node.",
            namespace=ns,
            registry=reg,
        )
        self.dead_lettered_messages = Counter(
            "dead_lettered_messages",
            "Malformed ingress messages sent to the dead-letter topic, by reason.",
            ["reason"],
            namespace=ns,
            registry=reg,
        )
        self.circuit_breaker_state = Gauge(
            "circuit_breaker_state",
            "Circuit breaker state per dependency: 0 closed, 1 half-open, 2 open.",
            ["dependency"],
            namespace=ns,
            registry=reg,
        )
        self.http_requests = Counter(
            "http_requests",
            "HTTP requests, by route template, method and status code.",
            ["route", "method", "status"],
            namespace=ns,
            registry=reg,
        )
        self.http_request_duration = Histogram(
            "http_request_duration_seconds",
            "HTTP request duration, by route template.",
            ["route"],
            namespace=ns,
            registry=reg,
            buckets=HTTP_BUCKETS,
        )
        self.auth_failures = Counter(
            "auth_failures",
            "HTTP requests refused: no API key or an unknown one (401), or a key lacking the "
            "route's scope (403).",
            ["reason"],
            namespace=ns,
            registry=reg,
        )
        self.undecryptable_events = Counter(
            "undecryptable_events",
            "Stored events whose payload the key ring could not open (parked or failed), "
            "by tier and key id.",
            ["tier", "key_id"],
            namespace=ns,
            registry=reg,
        )
        self.firing_process_restarts = Counter(
            "firing_process_restarts",
            "Times the dispatcher's process died unexpectedly and was started again.",
            namespace=ns,
            registry=reg,
        )
        self._initialize_series()

    def _initialize_series(self) -> None:
        # Series that exist from the start read as 0, so rate() and alerts work before traffic.
        for tier in TIERS:
            self.pending_events.labels(tier=tier)
            for source in SOURCES:
                self.events_scheduled.labels(tier=tier, source=source)
        for outcome in OUTCOMES:
            self.events_fired.labels(outcome=outcome)
        for result in SYNC_RESULTS:
            self.sync_runs.labels(result=result)

    # --- scheduling and firing -------------------------------------------------------------------
    def scheduled(self, tier: str, source: str, n: int = 1) -> None:
        """Count ``n`` new events stored in ``tier`` (redis|clickhouse) from ``source``."""
        if n > 0:
            self.events_scheduled.labels(
                tier=_pick(tier, TIERS), source=_pick(source, SOURCES)
            ).inc(n)

    def fired(self, outcome: str, lateness_seconds: float | None = None) -> None:
        """Count one final outcome; observe its lateness when the message was published.

        Lateness is observed for ``success`` only (the other outcomes never reached the broker);
        a negative value (clock skew between nodes) is observed as 0.
        """
        label = _pick(outcome, OUTCOMES)
        self.events_fired.labels(outcome=label).inc()
        if label == "success" and lateness_seconds is not None:
            self.firing_lateness.observe(max(lateness_seconds, 0.0))

    def set_pending(self, tier: str, count: int) -> None:
        """Set how many events wait in ``tier``."""
        self.pending_events.labels(tier=_pick(tier, TIERS)).set(count)

    def set_claims_in_flight(self, count: int) -> None:
        """Set how many claimed events this node has not acknowledged yet."""
        self.claims_in_flight.set(count)

    # --- sync ------------------------------------------------------------------------------------
    def sync_run(self, result: str, duration_seconds: float, moved: int = 0) -> None:
        """Record one sync run: ``result`` success|error, its duration and the events moved."""
        self.sync_runs.labels(result=_pick(result, SYNC_RESULTS)).inc()
        self.sync_duration.observe(max(duration_seconds, 0.0))
        if moved > 0:
            self.sync_moved_events.inc(moved)

    # --- Kafka ingress ---------------------------------------------------------------------------
    def set_consumer_lag(self, messages: int) -> None:
        """Set the consumer lag of the delayed-events topic, in messages."""
        self.consumer_lag.set(messages)

    def dead_lettered(self, reason: str) -> None:
        """Count one message sent to the dead-letter topic.

        ``reason`` must be a short category from a fixed set (e.g. ``invalid_json``,
        ``invalid_event``), never the error text: it is a label.
        """
        self.dead_lettered_messages.labels(reason=reason).inc()

    def watch_ingress(self, read: Callable[[], Mapping[str, Any] | None]) -> None:
        """Expose the Kafka consumer's counters, read from ``read()`` (its stats as a dict, plus
        ``stalled_seconds``; None before it starts) at each scrape."""
        self.registry.register(_IngressCollector(read))

    # --- resilience ------------------------------------------------------------------------------
    def set_breaker_state(self, dependency: str, state: str) -> None:
        """Set the breaker of ``dependency`` (redis, clickhouse, kafka…) to closed|half-open|open.

        Raises ``ValueError`` for another state name.
        """
        try:
            value = BREAKER_STATES[str(state).lower()]
        except KeyError:
            raise ValueError(f"unknown circuit breaker state {state!r}") from None
        self.circuit_breaker_state.labels(dependency=dependency).set(value)

    # --- HTTP ------------------------------------------------------------------------------------
    def http_request(self, route: str, method: str, status: int, duration_seconds: float) -> None:
        """Record one HTTP request. ``route`` must be the route template, not the raw path."""
        self.http_requests.labels(
            route=route, method=_pick(method.upper(), HTTP_METHODS), status=str(status)
        ).inc()
        self.http_request_duration.labels(route=route).observe(max(duration_seconds, 0.0))

    def auth_failed(self, reason: str) -> None:
        """Count one refused request: ``missing``, ``invalid`` (401) or ``forbidden`` (403)."""
        self.auth_failures.labels(reason=_pick(reason, AUTH_FAILURE_REASONS)).inc()

    def undecryptable(self, tier: str, key_id: str, n: int = 1) -> None:
        """Count ``n`` events of ``tier`` whose payload key ``key_id`` could not open."""
        self.undecryptable_events.labels(tier=_pick(tier, TIERS), key_id=key_id[:64]).inc(n)

    def firing_process_restarted(self) -> None:
        """Count one unexpected end of the dispatcher's process (it is started again)."""
        self.firing_process_restarts.inc()

    def watch_ownership(self, read: Callable[[], Sequence[Mapping[str, Any]]]) -> None:
        """Expose the shard ownership of this process's firing nodes, read at scrape time
        (``ShardOwnership.status()`` of each)."""
        self.registry.register(_OwnershipCollector(read))

    # --- exposition ------------------------------------------------------------------------------
    def render(self) -> bytes:
        """Every metric in the Prometheus text format (see :data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


class _IngressCollector(Collector):
    """The consumer's own counters, read at scrape time (they have one home: its stats)."""

    def __init__(self, read: Callable[[], Mapping[str, Any] | None]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        stats = self._read()
        if stats is None:
            return
        for name, doc in INGRESS_COUNTERS.items():
            yield CounterMetricFamily(f"{NAMESPACE}_ingress_{name}", doc, value=stats[name])
        ignored = CounterMetricFamily(
            f"{NAMESPACE}_ingress_ignored_messages",
            "Messages that changed nothing, by reason (duplicate, cancel_missed).",
            labels=["reason"],
        )
        for reason, count in sorted(stats["ignored_reasons"].items()):
            ignored.add_metric([reason], count)
        yield ignored
        yield GaugeMetricFamily(
            f"{NAMESPACE}_ingress_paused",
            "1 while consumption is paused because a store is unavailable.",
            value=float(stats["paused"]),
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_ingress_stalled_seconds",
            "Seconds the batch in hand has been waiting to be processed (0: not stalled).",
            value=float(stats["stalled_seconds"]),
        )


OWNERSHIP_COUNTERS = {
    "acquisitions": "Shard leases taken (at start, on a join, or from a node gone).",
    "lease_losses": "Shard leases lost without handing them back (expired or taken over).",
    "hand_backs": "Shards handed back to another node on a membership change.",
}


class _OwnershipCollector(Collector):
    """Owned shards and lease counters per firing node of this process."""

    def __init__(self, read: Callable[[], Sequence[Mapping[str, Any]]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        statuses = self._read()
        owned = GaugeMetricFamily(
            f"{NAMESPACE}_owned_shards",
            "Near-term shards this firing node holds a lease on and claims from.",
            labels=["node"],
        )
        live = GaugeMetricFamily(
            f"{NAMESPACE}_live_nodes",
            "Firing nodes alive in the membership, as this node last saw it.",
            labels=["node"],
        )
        counters = {
            name: CounterMetricFamily(f"{NAMESPACE}_shard_{name}", doc, labels=["node"])
            for name, doc in OWNERSHIP_COUNTERS.items()
        }
        for status in statuses:
            node = str(status["node_id"])
            owned.add_metric([node], len(status["owned"]))
            live.add_metric([node], status["live_nodes"])
            for name, family in counters.items():
                family.add_metric([node], status[name])
        yield owned
        yield live
        yield from counters.values()

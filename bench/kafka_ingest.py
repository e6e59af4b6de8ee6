"""Scenario 1b: scheduling through the Kafka delayed topic, until stored and committed.

``n`` delayed-topic messages (``events_client.build_delayed_message``, 300-byte body, one hour
of delay) are produced first (not timed). Then the product's consumer
(:class:`DelayedEventsConsumer` over :class:`KafkaDelayedSource`, product defaults: batches of
500) schedules them through a :class:`SchedulerService` on a :class:`RedisNearTermStore`. The
clock runs from the first non-empty poll (after the group join, reported beside it) until the
committed offsets cover all ``n`` messages.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from bench.common import Result, body_300, near_store
from delayline.adapters.kafka_consumer import KafkaDelayedSource, KafkaMessage
from delayline.clock import SystemClock
from delayline.events_client import build_delayed_message
from delayline.services.ingress import DelayedEventsConsumer
from delayline.services.scheduler import SchedulerService


class TimedSource:
    """Wraps the real source: notes the first non-empty poll and every commit's offsets."""

    def __init__(self, inner: KafkaDelayedSource, n: int) -> None:
        self.inner = inner
        self.n = n
        self.first_poll: float | None = None
        self.committed: dict[tuple[str, int], int] = {}
        self.progress: list[list[float]] = []
        self.all_committed = asyncio.Event()

    async def start(self) -> None:
        """Start the real source."""
        await self.inner.start()

    async def stop(self) -> None:
        """Stop the real source."""
        await self.inner.stop()

    async def poll(self, max_messages: int, timeout: float) -> Sequence[KafkaMessage]:
        """Poll the real source; the first non-empty batch starts the clock."""
        out = await self.inner.poll(max_messages, timeout)
        if out and self.first_poll is None:
            self.first_poll = time.perf_counter()
        return out

    async def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Commit through the real source, then count what is committed."""
        await self.inner.commit(offsets)
        self.committed.update(offsets)
        done = sum(self.committed.values())
        self.progress.append([time.perf_counter(), done])
        if done >= self.n:
            self.all_committed.set()

    async def pause(self) -> None:
        """Pause the real source."""
        await self.inner.pause()

    async def resume(self) -> None:
        """Resume the real source."""
        await self.inner.resume()

    def take_revoked(self) -> set[tuple[str, int]]:
        """Revoked partitions of the real source."""
        return self.inner.take_revoked()

    async def dead_letter(self, items: Sequence[tuple[Any, str]]) -> None:
        """Dead-letter through the real source (none expected here)."""
        await self.inner.dead_letter(items)


def produce(bootstrap: str, topic: str, n: int) -> float:
    """Produce ``n`` delayed-topic messages to a new one-partition topic; returns seconds."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result(10)
    producer: Any = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    body = body_300()
    started = time.perf_counter()
    for i in range(n):
        key, value, headers = build_delayed_message(
            topic="bench-ingest-out", body=body, delay_seconds=3600, correlation_id=f"c{i}"
        )
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers)
                break
            except BufferError:
                producer.poll(0.005)
        if i % 1000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    assert left == 0, f"{left} messages not delivered"
    return time.perf_counter() - started


async def run(redis_url: str, bootstrap: str, n: int, batch_size: int = 500) -> Result:
    """Consume ``n`` pre-produced messages into Redis; events/s until all are committed."""
    tag = uuid.uuid4().hex[:8]
    topic = f"bench-delayed-{tag}"
    produce_s = await asyncio.to_thread(produce, bootstrap, topic, n)
    async with near_store(redis_url) as store:
        service = SchedulerService(store, SystemClock())
        source = TimedSource(
            KafkaDelayedSource(
                bootstrap_servers=bootstrap,
                topic=topic,
                group_id=f"bench-{tag}",
                dead_letter_topic=f"{topic}-dlq",
            ),
            n,
        )
        consumer = DelayedEventsConsumer(service, source, batch_size=batch_size)
        started = time.perf_counter()
        await consumer.start()
        try:
            await asyncio.wait_for(source.all_committed.wait(), 120 + n / 200)
        finally:
            await consumer.stop()
        pending = (await store.counts())["pending"]
    first = source.first_poll or started
    last = source.progress[-1][0] if source.progress else time.perf_counter()
    seconds = last - first
    return {
        "scenario": "1b scheduling through the Kafka delayed topic",
        "events": n,
        "batch_size": batch_size,
        "stored": pending,
        "scheduled": consumer.stats.scheduled,
        "dead_lettered": consumer.stats.dead_lettered,
        "seconds": seconds,
        "events_per_s": n / seconds if seconds > 0 else 0.0,
        "group_join_s": first - started,
        "produce_events_per_s": n / produce_s,
        "progress": [[t - first, c] for t, c in source.progress],
    }

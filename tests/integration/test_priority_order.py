"""Priority order at any size: events due at the same instant are published in priority order
(higher first), then submission order, per target partition — through Kafka out."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from datetime import timedelta

from confluent_kafka import Consumer, TopicPartition

from delayline.adapters.embedded import EmbeddedTansu
from delayline.adapters.kafka_producer import KafkaEventPublisher, producer_config
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.clock import SystemClock
from delayline.domain.events import utc_now
from delayline.domain.outcomes import ExecutionResult
from delayline.services.dispatcher import Dispatcher, DispatcherConfig
from delayline.services.scheduler import SchedulerService
from tests.support import create_topics

EVENTS = 10_000
PARTITIONS = 3


class _Sink:
    def record(self, result: ExecutionResult) -> None:
        pass


def _inversions(values: list[tuple[int, int]]) -> int:
    """Pairs out of ascending order (merge sort count)."""
    if len(values) < 2:
        return 0
    mid = len(values) // 2
    left, right = sorted(values[:mid]), sorted(values[mid:])
    count = _inversions(values[:mid]) + _inversions(values[mid:])
    j = 0
    for item in left:
        while j < len(right) and right[j] < item:
            j += 1
        count += j
    return count


def _read_by_partition(bootstrap: str, topic: str, count: int) -> dict[int, list[bytes]]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"r-{topic}", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    out: dict[int, list[bytes]] = defaultdict(list)
    read = 0
    deadline = time.monotonic() + 120
    try:
        while read < count and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.2):
                partition, value = msg.partition(), msg.value()
                if msg.error() is None and partition is not None and value is not None:
                    out[partition].append(value)
                    read += 1
    finally:
        consumer.close()
    return out


async def test_ten_thousand_simultaneous_events_fire_in_priority_then_submission_order(
    store: RedisNearTermStore, broker: EmbeddedTansu, unique: str
) -> None:
    topic = f"order-{unique}"
    create_topics(broker.bootstrap_servers, topic, partitions=PARTITIONS)
    clock = SystemClock()
    service = SchedulerService(store, clock)
    # One instant for all. Claims run 5 s ahead, so every batch in flight is claimed before
    # the due time and waits for it: they all publish at the same moment.
    due = utc_now() + timedelta(seconds=3)
    priorities = [1 + (i * 7919) % 3 for i in range(EVENTS)]
    await service.schedule_bulk(
        [
            {
                "topic": topic,
                "body": f"{p}:{i}",
                "scheduled_at": due,
                "priority": p,
                "correlation_id": f"key-{i}",
            }
            for i, p in enumerate(priorities)
        ]
    )
    publisher = KafkaEventPublisher(
        producer_config(broker.bootstrap_servers, linger_ms=1, lease_seconds=30, extra={})
    )
    await publisher.start()
    dispatcher = Dispatcher(
        store,
        publisher,
        _Sink(),
        clock,
        DispatcherConfig(claim_batch_size=100, claim_lookahead_seconds=5, node_id="t"),
    )
    task = asyncio.create_task(dispatcher.run())
    try:
        fired = await asyncio.to_thread(_read_by_partition, broker.bootstrap_servers, topic, EVENTS)
    finally:
        dispatcher.stop()
        await task
        await publisher.stop()
    assert sum(len(v) for v in fired.values()) == EVENTS
    assert len(fired) == PARTITIONS
    for partition, values in fired.items():
        order = []
        for value in values:
            priority, index = value.decode().split(":")
            order.append((-int(priority), int(index)))
        assert _inversions(order) == 0, f"partition {partition}"

"""Fixtures for the delayed-events ingress against the real Tansu broker and Valkey."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from delayline.adapters.embedded import EmbeddedTansu
from delayline.adapters.kafka_consumer import KafkaDelayedSource
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.clock import SystemClock
from delayline.services.ingress import DelayedEventsConsumer
from delayline.services.scheduler import SchedulerService
from tests.support import TopicReader, create_topics

Headers = Sequence[tuple[str, bytes | None]]


@dataclass
class Sent:
    """Where a produced message landed."""

    partition: int
    offset: int
    timestamp_ms: int


@dataclass
class Ingress:
    """A delayed topic, its dead-letter topic and group, and helpers around them."""

    bootstrap: str
    topic: str
    dlq: str
    group: str
    service: SchedulerService
    dead_letters: TopicReader
    consumers: list[DelayedEventsConsumer] = field(default_factory=list)

    def consumer(self, **kwargs: object) -> DelayedEventsConsumer:
        """A consumer of the delayed topic in the group (stopped by the fixture)."""
        source = KafkaDelayedSource(
            bootstrap_servers=self.bootstrap,
            topic=self.topic,
            group_id=self.group,
            dead_letter_topic=self.dlq,
            session_timeout_ms=6000,
        )
        consumer = DelayedEventsConsumer(self.service, source, **kwargs)  # type: ignore[arg-type]
        self.consumers.append(consumer)
        return consumer

    def produce(self, *messages: tuple[bytes | None, bytes | None, Headers]) -> list[Sent]:
        """Produce ``(key, value, headers)`` messages; returns where each landed, in order."""
        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 0})
        sent: dict[int, Sent] = {}

        def report(i: int) -> Callable[[object, object], None]:
            def cb(err: object, msg: object) -> None:
                assert err is None, err
                ts = msg.timestamp()[1]  # type: ignore[attr-defined]
                sent[i] = Sent(msg.partition(), msg.offset(), ts)  # type: ignore[attr-defined]

            return cb

        for i, (key, value, headers) in enumerate(messages):
            hdrs: list[tuple[str, str | bytes | None]] = list(headers)
            producer.produce(self.topic, value=value, key=key, headers=hdrs, on_delivery=report(i))
        assert producer.flush(20) == 0
        return [sent[i] for i in range(len(messages))]

    def committed(self, partitions: int) -> dict[int, int]:
        """The group's committed offset per partition (-1001: none)."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group})
        try:
            tps = consumer.committed(
                [TopicPartition(self.topic, p) for p in range(partitions)], timeout=10
            )
        finally:
            consumer.close()
        return {tp.partition: tp.offset for tp in tps}


@pytest.fixture
def make_ingress(
    broker: EmbeddedTansu, store: RedisNearTermStore, unique: str
) -> Iterator[Callable[[int], Ingress]]:
    """Creates the topics (``partitions`` for the delayed one) and returns the helper."""
    readers: list[TopicReader] = []

    def make(partitions: int = 1) -> Ingress:
        topic, dlq = f"delayed-{unique}", f"delayed-{unique}.dlq"
        create_topics(broker.bootstrap_servers, topic, partitions=partitions)
        readers.append(TopicReader(broker.bootstrap_servers, dlq))  # creates the DLQ topic
        service = SchedulerService(store, SystemClock())
        return Ingress(broker.bootstrap_servers, topic, dlq, f"g-{unique}", service, readers[-1])

    yield make
    for reader in readers:
        reader.close()


@pytest.fixture
async def ingress(make_ingress: Callable[[int], Ingress]) -> AsyncIterator[Ingress]:
    """One-partition topics; every consumer made from it is stopped afterwards."""
    made = make_ingress(1)
    yield made
    for consumer in made.consumers:
        await consumer.stop()


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    """Wait until ``check()`` is true; fail after ``timeout`` (a deadline, not a measurement)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)

"""The MessageSource contract: the delayed-topic consumer, bare and behind its breaker."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from confluent_kafka import Producer

from delayline.adapters.embedded import EmbeddedTansu
from delayline.adapters.guarded import GuardedMessageSource
from delayline.adapters.kafka_consumer import KafkaDelayedSource
from delayline.ports import DelayedMessage, MessageSource
from delayline.resilience import CircuitBreaker
from tests.support import create_topics

SOURCES: dict[str, Callable[[KafkaDelayedSource], MessageSource]] = {
    "kafka": lambda source: source,
    "guarded": lambda source: GuardedMessageSource(source, CircuitBreaker("kafka_consumer")),
}


class Topic:
    """A delayed topic of this test; ``source()`` makes a member of its consumer group."""

    def __init__(self, kind: str, bootstrap: str, unique: str) -> None:
        self.kind = kind
        self.bootstrap = bootstrap
        self.unique = unique
        self.name = f"delayed-{unique}"
        create_topics(bootstrap, self.name, f"{self.name}-dlq")

    def produce(self, *numbers: int) -> None:
        """Produce messages ``m<n>`` with key ``k`` and the header ``x-n``."""
        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 0})
        for n in numbers:
            producer.produce(self.name, value=f"m{n}".encode(), key=b"k", headers=[("x-n", str(n))])
        assert producer.flush(20) == 0

    def source(self) -> MessageSource:
        return SOURCES[self.kind](
            KafkaDelayedSource(
                bootstrap_servers=self.bootstrap,
                topic=self.name,
                group_id=f"group-{self.unique}",
                dead_letter_topic=f"{self.name}-dlq",
            )
        )


@pytest.fixture(params=sorted(SOURCES))
def topic(request: pytest.FixtureRequest, broker: EmbeddedTansu, unique: str) -> Topic:
    """A delayed topic holding ``m0``..``m3``, read through each implementation."""
    created = Topic(request.param, broker.bootstrap_servers, unique)
    created.produce(0, 1, 2, 3)
    return created


async def _poll(source: MessageSource, count: int, timeout: float = 30) -> list[DelayedMessage]:
    got: list[DelayedMessage] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got.extend(await source.poll(10, 0.2))
    return got


class TestMessageSource:
    async def test_poll_hands_over_records_in_order_unless_paused(self, topic: Topic) -> None:
        source = topic.source()
        await source.start()
        try:
            got = await _poll(source, 4)
            assert [m.value for m in got] == [b"m0", b"m1", b"m2", b"m3"]
            assert [m.offset for m in got] == [0, 1, 2, 3]
            assert got[0].key == b"k" and tuple(got[0].headers) == (("x-n", b"0"),)
            assert got[0].header_error is None and got[0].timestamp_ms is not None
            await source.pause()
            topic.produce(4, 5)
            assert await _poll(source, 1, timeout=1) == []
            await source.resume()
            assert [m.value for m in await _poll(source, 2)] == [b"m4", b"m5"]
        finally:
            await source.stop()

    async def test_a_new_member_resumes_after_the_commit(self, topic: Topic) -> None:
        first = topic.source()
        await first.start()
        try:
            got = await _poll(first, 4)
            await first.commit({(got[1].topic, got[1].partition): got[1].offset + 1})
            assert first.take_revoked() == set()
        finally:
            await first.stop()
        second = topic.source()
        await second.start()
        try:
            assert [m.value for m in await _poll(second, 2)] == [b"m2", b"m3"]
        finally:
            await second.stop()

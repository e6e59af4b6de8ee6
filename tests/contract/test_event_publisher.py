"""The EventPublisher contract: the Kafka producer, bare and behind its breaker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import pytest

from delayline.adapters.embedded import EmbeddedTansu
from delayline.adapters.guarded import GuardedPublisher
from delayline.adapters.kafka_producer import KafkaEventPublisher, producer_config
from delayline.domain.events import new_event, utc_now
from delayline.domain.outcomes import Delivery
from delayline.ports import EventPublisher
from delayline.resilience import CircuitBreaker
from tests.support import TopicReader

PUBLISHERS: dict[str, Callable[[KafkaEventPublisher], EventPublisher]] = {
    "kafka": lambda publisher: publisher,
    "guarded": lambda publisher: GuardedPublisher(publisher, CircuitBreaker("kafka_producer")),
}


@pytest.fixture(params=sorted(PUBLISHERS))
async def publisher(
    request: pytest.FixtureRequest, broker: EmbeddedTansu
) -> AsyncIterator[EventPublisher]:
    kafka = KafkaEventPublisher(
        producer_config(broker.bootstrap_servers, linger_ms=0, lease_seconds=30, extra={})
    )
    await kafka.start()
    yield PUBLISHERS[request.param](kafka)
    await kafka.stop()


class TestEventPublisher:
    async def test_each_event_gets_its_delivery_report(
        self, publisher: EventPublisher, broker: EmbeddedTansu, unique: str
    ) -> None:
        topic = f"contract-{unique}"
        reader = TopicReader(broker.bootstrap_servers, topic)
        try:
            events = [
                new_event(
                    topic=topic,
                    body=f"body-{i}".encode(),
                    scheduled_at=utc_now() + timedelta(seconds=1),
                    schedule_id=f"{unique}-{i}",
                )
                for i in range(3)
            ]
            results = await publisher.publish(events)
            assert all(isinstance(r, Delivery) for r in results)
            offsets = [r.offset for r in results if isinstance(r, Delivery)]
            assert offsets == sorted(offsets) and len(set(offsets)) == 3
            fired = reader.read(3)
            assert [m.value for m in fired] == [b"body-0", b"body-1", b"body-2"]
            assert [m.header("x-schedule-id") for m in fired] == [e.schedule_id for e in events]
            assert await publisher.publish([]) == []
        finally:
            reader.close()

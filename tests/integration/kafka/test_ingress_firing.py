"""End to end: publish_with_delay and each message form → consumer → Redis → dispatcher → topic."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from delayline.adapters.embedded import EmbeddedTansu
from delayline.adapters.kafka_producer import KafkaEventPublisher, producer_config
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.clock import SystemClock
from delayline.domain.events import EventStatus
from delayline.domain.outcomes import ExecutionResult
from delayline.events_client import get_event_bus
from delayline.services.dispatcher import Dispatcher, DispatcherConfig
from tests import kafka_wire
from tests.integration.kafka.conftest import Ingress, until
from tests.support import TopicReader


class _Sink:
    def record(self, result: ExecutionResult) -> None:
        pass


@dataclass
class Firing:
    ingress: Ingress
    target: str
    reader: TopicReader


@pytest.fixture
async def firing(
    ingress: Ingress, store: RedisNearTermStore, broker: EmbeddedTansu, unique: str
) -> AsyncIterator[Firing]:
    target = f"fired-{unique}"
    reader = TopicReader(broker.bootstrap_servers, target)
    publisher = KafkaEventPublisher(
        producer_config(broker.bootstrap_servers, linger_ms=0, lease_seconds=30, extra={})
    )
    await publisher.start()
    dispatcher = Dispatcher(
        store, publisher, _Sink(), SystemClock(), DispatcherConfig(max_sleep_seconds=5, node_id="t")
    )
    task = asyncio.create_task(dispatcher.run())
    await ingress.consumer().start()
    yield Firing(ingress, target, reader)
    dispatcher.stop()
    await task
    await publisher.stop()
    reader.close()


async def test_publish_with_delay_round_trip(firing: Firing, store: RedisNearTermStore) -> None:
    bus = get_event_bus(firing.ingress.bootstrap, firing.ingress.topic)
    try:
        later = await bus.publish_with_delay(
            topic=firing.target,
            entity_type="user",
            action="send_reminder",
            body={"user_id": 123},
            delay_seconds=1800,
            correlation_id="reminder-123",
            priority=1,
        )
        soon = await bus.publish_with_delay(
            topic=firing.target,
            entity_type="user",
            action="ping",
            body="now",
            delay_seconds=0.5,
            correlation_id="c-1",
            headers={"origin": "test"},
            schedule_id="given-id",
        )
    finally:
        await bus.close()
    assert soon == "given-id"
    [msg] = await asyncio.to_thread(firing.reader.read, 1, 30)
    assert (msg.key, msg.value) == (b"c-1", b"now")
    assert msg.header("x-schedule-id") == "given-id"
    assert (msg.header("x-action"), msg.header("origin")) == ("ping", "test")

    async def stored() -> bool:
        return await store.get(later) is not None

    await until(stored)
    event = await store.get(later)
    assert event is not None
    assert event.status is EventStatus.PENDING
    assert (event.topic, event.action, event.priority) == (firing.target, "send_reminder", 1)
    assert orjson.loads(event.body) == {"user_id": 123}
    assert event.correlation_id == "reminder-123"


async def test_each_form_fires(firing: Firing) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=0.5)
    target = firing.target.encode()
    firing.ingress.produce(
        (b"k-native", b"native", [("x-topic", target), ("x-delay-seconds", b"0.5")]),
        (
            None,
            orjson.dumps({"topic": firing.target, "body": "envelope", "scheduled_at": soon}),
            [("content-type", b"application/vnd.delayline.envelope+json")],
        ),
        (
            b"etf1-id",
            b"etf1",
            [
                ("scheduler-epoch", str(int(soon.timestamp())).encode()),
                ("scheduler-target-topic", target),
                ("scheduler-target-key", b"tk"),
            ],
        ),
    )
    fired = await asyncio.to_thread(firing.reader.read, 3, 30)
    by_value = {m.value: m for m in fired}
    assert set(by_value) == {b"native", b"envelope", b"etf1"}
    assert by_value[b"native"].key == b"k-native"
    assert by_value[b"etf1"].key == b"tk"
    assert by_value[b"etf1"].header("x-schedule-id") == "etf1-id"


async def test_a_header_key_not_utf8_costs_only_its_message(firing: Firing) -> None:
    """A, B, C in one raw Produce request; B has the header key b"\\xff\\xfe", which
    confluent-kafka cannot even read. A and C fire; B is dead-lettered with the reason."""
    ingress, target = firing.ingress, firing.target.encode()

    def native(sid: bytes, *extra: tuple[bytes, bytes | None]) -> list[tuple[bytes, bytes | None]]:
        return [(b"x-topic", target), (b"x-delay-seconds", b"0.3"), (b"x-schedule-id", sid),
                *extra]  # fmt: skip

    base = await asyncio.to_thread(
        kafka_wire.produce,
        ingress.bootstrap,
        ingress.topic,
        0,
        [
            (b"ka", b"A", native(b"wire-a")),
            (b"kb", b"B", native(b"wire-b", (b"\xff\xfe", b"bad key"), (b"origin", b"o"))),
            (b"kc", b"C", native(b"wire-c")),
        ],
    )
    fired = await asyncio.to_thread(firing.reader.read, 2, 30)
    assert sorted(m.value or b"" for m in fired) == [b"A", b"C"]
    assert {m.header("x-schedule-id") for m in fired} == {"wire-a", "wire-c"}
    [dead] = await asyncio.to_thread(ingress.dead_letters.read, 1, 30)
    assert (dead.key, dead.value) == (b"kb", b"B")
    assert dead.header("x-dlq-reason") == "invalid_header: a header key is not UTF-8"
    assert dead.header("x-dlq-source-offset") == str(base + 1)
    assert "not included" in dead.header("x-dlq-unreadable-headers")

    async def committed() -> bool:
        return ingress.committed(1)[0] == base + 3

    await until(committed)
    await asyncio.sleep(0.5)  # nothing else arrives: B was not scheduled
    assert len(firing.reader.read_for(0.5)) == 2

"""The delayed-events consumer on the real broker and store: forms, tombstones, dead letters."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson

from delayline.adapters.kafka_consumer import KafkaDelayedSource, KafkaMessage
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.domain.events import EventStatus, ScheduledEvent
from delayline.domain.wire import derive_schedule_id
from delayline.events_client import build_delayed_message
from tests.integration.kafka.conftest import Ingress, until

ENVELOPE = ("content-type", b"application/vnd.delayline.envelope+json")
DELAY = ("x-delay-seconds", b"1")


async def _stored(store: RedisNearTermStore, sid: str) -> ScheduledEvent:
    async def present() -> bool:
        return await store.get(sid) is not None

    await until(present)
    event = await store.get(sid)
    assert event is not None
    return event


async def test_every_accepted_form_is_scheduled(
    ingress: Ingress, store: RedisNearTermStore
) -> None:
    native = (
        b"ord-9",
        b'{"user_id": 123}',
        [
            ("x-topic", b"user.notifications"),
            ("x-delay-seconds", b"1800"),
            ("x-entity-type", b"user"),
            ("x-action", b"send_reminder"),
            ("x-correlation-id", b"reminder-123"),
            ("x-priority", b"2"),
            ("x-max-delay-seconds", b"120"),
            ("trace", b"t-1"),
        ],
    )
    envelope = (
        None,
        orjson.dumps(
            {
                "topic": "orders",
                "body": {"order": 1},
                "scheduled_at": "2031-02-03T04:05:06+00:00",
                "entity_type": "order",
                "action": "expire",
                "headers": {"h": "v"},
                "schedule_id": "env-1",
            }
        ),
        [ENVELOPE],
    )
    etf1 = (
        b"etf1-schedule",
        b"legacy",
        [
            ("scheduler-epoch", b"1924992000"),
            ("scheduler-target-topic", b"legacy.target"),
            ("scheduler-target-key", b"target-key"),
        ],
    )
    sent = ingress.produce(native, envelope, etf1)
    await ingress.consumer().start()

    first = sent[0]
    sid = derive_schedule_id(ingress.topic, first.partition, first.offset, first.timestamp_ms)
    ev = await _stored(store, sid)
    assert (ev.topic, ev.entity_type, ev.action) == ("user.notifications", "user", "send_reminder")
    assert (ev.correlation_id, ev.priority, ev.max_delay_seconds) == ("reminder-123", 2, 120)
    assert ev.body == b'{"user_id": 123}'
    assert dict(ev.headers) == {"trace": "t-1"}
    produced_at = datetime.fromtimestamp(first.timestamp_ms / 1000, UTC)
    assert ev.scheduled_at == produced_at + timedelta(seconds=1800)
    assert ev.status is EventStatus.PENDING

    ev = await _stored(store, "env-1")
    assert (ev.topic, ev.action, dict(ev.headers)) == ("orders", "expire", {"h": "v"})
    assert orjson.loads(ev.body) == {"order": 1}
    assert ev.scheduled_at == datetime(2031, 2, 3, 4, 5, 6, tzinfo=UTC)

    ev = await _stored(store, "etf1-schedule")
    assert (ev.topic, ev.body, ev.correlation_id) == ("legacy.target", b"legacy", "target-key")
    assert ev.scheduled_at == datetime.fromtimestamp(1924992000, UTC)


async def test_tombstone_cancels(ingress: Ingress, store: RedisNearTermStore) -> None:
    service = ingress.service
    far = datetime.now(UTC) + timedelta(hours=1)
    by_key = await service.schedule_event(topic="t", body="a", scheduled_at=far)
    by_header = await service.schedule_event(topic="t", body="b", scheduled_at=far)
    kept = await service.schedule_event(topic="t", body="c", scheduled_at=far)
    ingress.produce(
        (by_key.encode(), None, []),
        (b"whatever", None, [("x-schedule-id", by_header.encode())]),
        (b"unknown-id", None, []),
    )
    consumer = ingress.consumer()
    await consumer.start()

    async def cancelled() -> bool:
        return consumer.stats.cancelled + consumer.stats.cancel_missed == 3

    await until(cancelled)
    for sid in (by_key, by_header):
        event = await store.get(sid)
        assert event is not None
        assert event.status is EventStatus.CANCELLED
    still = await store.get(kept)
    assert still is not None
    assert still.status is EventStatus.PENDING
    assert (consumer.stats.cancelled, consumer.stats.cancel_missed) == (2, 1)


async def test_bad_messages_go_to_the_dead_letter_topic(
    ingress: Ingress, store: RedisNearTermStore
) -> None:
    def good(sid: str) -> tuple[bytes, bytes, list[tuple[str, bytes | None]]]:
        return (
            b"k",
            b"ok",
            [("x-topic", b"t"), ("x-delay-seconds", b"60"), ("x-schedule-id", sid.encode())],
        )

    bad: list[tuple[str, tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]]] = [
        ("missing_header", (b"k1", b"v1", [("x-delay-seconds", b"1")])),
        ("invalid_utf8", (b"k2", b"v2", [("x-topic", b"\xff\xfe"), ("x-delay-seconds", b"1")])),
        ("duplicate_header", (b"k3", b"v3", [("x-topic", b"a"), ("x-topic", b"b"), DELAY])),
        ("oversize", (b"k4", b"v4", [("x-topic", b"t"), ("x-action", b"a" * 5000), DELAY])),
        ("invalid_header", (b"k5", b"v5", [("x-topic", b"t"), ("x-delay-seconds", b"later")])),
        ("invalid_event", (b"k6", b"v6", [("x-topic", b"not a topic"), ("x-delay-seconds", b"1")])),
        ("invalid_envelope", (b"k7", b"{oops", [ENVELOPE])),
        ("invalid_key", (None, None, [])),
    ]  # fmt: skip
    messages = []
    for i, (_, message) in enumerate(bad):
        messages += [good(f"good-{i}"), message]
    messages.append(good("good-last"))
    sent = ingress.produce(*messages)
    consumer = ingress.consumer()
    await consumer.start()
    dead = await asyncio.to_thread(ingress.dead_letters.read, len(bad), 30)
    assert [d.header("x-dlq-reason").split(":")[0] for d in dead] == [code for code, _ in bad]
    for d, (_, (key, value, headers)) in zip(dead, bad, strict=True):
        assert (d.key, d.value) == (key, value)
        for name, raw in headers:
            assert name in d.headers
            if name != "x-topic" or raw != b"a":  # the duplicate: both copies are kept
                assert raw in {d.headers[name], None}
        assert d.header("x-dlq-source-topic") == ingress.topic
    offsets = [int(d.header("x-dlq-source-offset")) for d in dead]
    assert offsets == [sent[2 * i + 1].offset for i in range(len(bad))]
    for i in [*range(len(bad)), "last"]:
        await _stored(store, f"good-{i}")

    async def committed() -> bool:
        return ingress.committed(1)[0] == sent[-1].offset + 1

    await until(committed)
    assert consumer.stats.dead_lettered == len(bad)
    assert consumer.stats.scheduled == len(bad) + 1


async def test_two_consumers_share_partitions_exactly_once(
    make_ingress: Callable[[int], Ingress], store: RedisNearTermStore
) -> None:
    ingress = make_ingress(4)
    first, second = ingress.consumer(), ingress.consumer()
    try:
        await first.start()
        await second.start()
        sources = [c._source for c in (first, second)]

        async def both_assigned() -> bool:
            owned = [s.assignment for s in sources]  # type: ignore[attr-defined]
            return all(owned) and len(owned[0] | owned[1]) == 4

        await until(both_assigned)
        count = 200
        hdrs: list[tuple[str, bytes | None]] = [("x-topic", b"t"), ("x-delay-seconds", b"600")]
        sent = ingress.produce(*[(f"key-{i}".encode(), b"m", hdrs) for i in range(count)])
        assert len({s.partition for s in sent}) > 1

        async def all_stored() -> bool:
            return first.stats.scheduled + second.stats.scheduled >= count

        await until(all_stored)
    finally:
        await first.stop()
        await second.stop()
    assert first.stats.consumed > 0
    assert second.stats.consumed > 0
    assert first.stats.scheduled + second.stats.scheduled == count
    assert first.stats.duplicates + second.stats.duplicates == 0
    counts = await store.counts()
    assert (counts["pending"], counts["scheduled"]) == (count, count)
    for s in sent:
        sid = derive_schedule_id(ingress.topic, s.partition, s.offset, s.timestamp_ms)
        assert await store.get(sid) is not None


async def test_a_client_message_sent_twice_is_stored_once(
    ingress: Ingress, store: RedisNearTermStore
) -> None:
    """A producer retry (the same built message sent again) must not make a second event."""
    key, value, headers = build_delayed_message(
        topic="t", body="once", delay_seconds=600, correlation_id="c-1"
    )
    sent_headers: list[tuple[str, bytes | None]] = list(headers)
    ingress.produce((key, value, sent_headers), (key, value, sent_headers))
    consumer = ingress.consumer()
    await consumer.start()

    async def both_processed() -> bool:
        return consumer.stats.scheduled + consumer.stats.duplicates == 2

    await until(both_processed)
    assert (consumer.stats.scheduled, consumer.stats.duplicates) == (1, 1)
    assert key is not None
    event = await store.get(key.decode())
    assert event is not None
    assert event.correlation_id == "c-1"
    assert (await store.counts())["scheduled"] == 1


async def test_a_dead_letter_refused_for_its_size_goes_as_a_bare_note(ingress: Ingress) -> None:
    """Should the size budget be wrong (a limit the broker did not tell), the producer's refusal
    is not an outage: the dead letter goes again as its notes alone."""
    source = KafkaDelayedSource(
        bootstrap_servers=ingress.bootstrap,
        topic=ingress.topic,
        group_id=ingress.group,
        dead_letter_topic=ingress.dlq,
    )
    await source.start()
    try:
        source.max_message_bytes = 10_000_000  # believed, but the producer takes 1,000,000
        big = KafkaMessage(ingress.topic, 0, 5, b"k", b"v" * 2_000_000, (("h", b"1"),), 1)
        refused = await source.dead_letter([(big, "invalid_event: body too large")])
    finally:
        await source.stop()
    assert refused == []
    [dead] = await asyncio.to_thread(ingress.dead_letters.read, 1, 30)
    assert (dead.key, dead.value) == (None, b"")
    assert dead.header("x-dlq-reason") == "invalid_event: body too large"
    assert "value=2000000" in dead.header("x-dlq-original-sizes")
    assert "h" not in dead.headers

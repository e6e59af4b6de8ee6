"""The Redis tier's Lua scripts against a real Valkey server."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import timedelta

from redis.asyncio import Redis

from delayline.adapters.encryption import KeyRing, PayloadCipher
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.domain.events import EventStatus, ScheduledEvent, new_event, to_epoch_us, utc_now
from delayline.ports import Finished


def _event(offset_s: float, priority: int = 0, sid: str | None = None) -> ScheduledEvent:
    return new_event(
        topic="t",
        entity_type="user",
        action="remind",
        body='{"a": 1}',
        scheduled_at=utc_now() + timedelta(seconds=offset_s),
        priority=priority,
        schedule_id=sid,
    )


async def test_schedule_is_idempotent(store: RedisNearTermStore) -> None:
    ev = _event(10, sid="same")
    assert await store.schedule([ev]) == [True]
    assert await store.schedule([ev, _event(5, sid="other")]) == [False, True]
    counts = await store.counts()
    assert counts["pending"] == 2
    assert counts["scheduled"] == 2


async def test_claim_orders_by_time_then_priority(store: RedisNearTermStore) -> None:
    now = utc_now()
    same = now - timedelta(seconds=1)
    evs = [
        new_event(topic="t", scheduled_at=same, priority=p, schedule_id=f"p{p}")
        for p in (0, 5, -3, 2)
    ]
    evs.append(new_event(topic="t", scheduled_at=same - timedelta(seconds=1), schedule_id="early"))
    evs.append(new_event(topic="t", scheduled_at=now + timedelta(hours=1), schedule_id="later"))
    await store.schedule(evs)
    claim = await store.claim(to_epoch_us(now), 100, 30)
    assert [e.schedule_id for e in claim.events] == ["early", "p5", "p2", "p0", "p-3"]
    assert claim.next_due_us == evs[-1].due_us  # the "later" one: the next wake-up
    empty = await store.claim(to_epoch_us(now), 100, 30)
    assert empty.events == []
    assert empty.next_due_us == evs[-1].due_us
    assert all(e.status == EventStatus.PROCESSING for e in claim.events)
    assert (await store.counts())["processing"] == 5


async def test_ack_needs_the_token(store: RedisNearTermStore) -> None:
    now = utc_now()
    await store.schedule([_event(-1, sid="a")])
    claim = await store.claim(to_epoch_us(now), 10, 30)
    assert await store.ack("wrong", [Finished("a", EventStatus.COMPLETED)]) == 0
    assert await store.ack(claim.token, [Finished("a", EventStatus.COMPLETED)]) == 1
    got = await store.get("a")
    assert got is not None and got.status == EventStatus.COMPLETED
    # remembered as finished: scheduling it again makes nothing
    assert await store.schedule([_event(-1, sid="a")]) == [False]


async def test_reap_returns_expired_leases_and_fences_old_token(
    store: RedisNearTermStore,
) -> None:
    now_us = to_epoch_us(utc_now())
    await store.schedule([_event(-1, sid="a")])
    first = await store.claim(now_us, 10, 1)
    assert await store.reap(now_us + 500_000) == 0
    assert await store.reap(now_us + 2_000_000) == 1
    second = await store.claim(now_us + 2_000_000, 10, 30)
    assert [e.schedule_id for e in second.events] == ["a"]
    assert await store.ack(first.token, [Finished("a", EventStatus.COMPLETED)]) == 0
    assert await store.ack(second.token, [Finished("a", EventStatus.COMPLETED)]) == 1


async def test_cancel_and_reschedule(store: RedisNearTermStore) -> None:
    ev = _event(60, sid="x")
    await store.schedule([ev])
    assert await store.reschedule("x", ev.due_us - 120_000_000)
    got = await store.get("x")
    assert got is not None and got.due_us == ev.due_us - 120_000_000
    assert await store.next_due_us() == ev.due_us - 120_000_000
    assert await store.cancel("x")
    assert not await store.cancel("x")
    got = await store.get("x")
    assert got is not None and got.status == EventStatus.CANCELLED
    assert (await store.claim(to_epoch_us(utc_now()) + 120_000_000, 10, 30)).events == []


async def test_cancel_many_answers_each_id_and_spares_a_leased_one(
    store: RedisNearTermStore,
) -> None:
    await store.schedule([_event(-1, sid="leased"), _event(60, sid="a"), _event(60, sid="b")])
    claim = await store.claim(to_epoch_us(utc_now()), 10, 30)
    assert [e.schedule_id for e in claim.events] == ["leased"]
    assert await store.cancel_many(["a", "unknown", "leased", "b", "a"]) == [
        True,
        False,
        False,
        True,
        False,
    ]
    for sid in ("a", "b"):
        got = await store.get(sid)
        assert got is not None and got.status == EventStatus.CANCELLED
    got = await store.get("leased")
    assert got is not None and got.status == EventStatus.PROCESSING
    assert await store.cancel_many([]) == []


async def test_retry_keeps_original_time(store: RedisNearTermStore) -> None:
    now_us = to_epoch_us(utc_now())
    ev = _event(-1, sid="r")
    await store.schedule([ev])
    claim = await store.claim(now_us, 10, 30)
    again = replace(claim.events[0], attempts=1, last_error="boom")
    assert await store.retry(claim.token, again, now_us + 5_000_000)
    assert (await store.claim(now_us, 10, 30)).events == []
    later = await store.claim(now_us + 5_000_000, 10, 30)
    assert later.events[0].attempts == 1
    assert later.events[0].scheduled_at == ev.scheduled_at


async def test_bulk_schedule_over_several_chunks_keeps_order(store: RedisNearTermStore) -> None:
    events = [_event(60 + i, sid=f"bulk-{i}") for i in range(1234)]
    await store.schedule(events[600:700])  # already there: inside the second chunk
    inserted = await store.schedule(events)
    assert inserted == [not 600 <= i < 700 for i in range(1234)]
    assert (await store.counts())["pending"] == 1234


async def test_the_same_id_twice_in_one_call_is_stored_once(store: RedisNearTermStore) -> None:
    first, second = _event(30, sid="twice"), _event(90, sid="twice")
    assert await store.schedule([first, _event(40, sid="once"), second]) == [True, True, False]
    got = await store.get("twice")
    assert got is not None and got.scheduled_at == first.scheduled_at
    assert (await store.counts())["pending"] == 2


async def test_equal_times_fire_by_priority_then_submission_order(
    store: RedisNearTermStore,
) -> None:
    """The member carries the submission sequence: equal due time and priority keep the order
    of scheduling, across calls and chunks, whatever the ids."""
    due = utc_now() - timedelta(seconds=1)
    ids = [f"{i % 7}-{i:04d}"[::-1] for i in range(1200)]  # ids in no sorted order
    events = [
        new_event(topic="t", scheduled_at=due, priority=i % 3, schedule_id=sid)
        for i, sid in enumerate(ids)
    ]
    await store.schedule(events[:700])  # two chunks in one call, then another call
    await store.schedule(events[700:])
    claimed = []
    while batch := (await store.claim(to_epoch_us(utc_now()), 100, 30)).events:
        claimed += [e.schedule_id for e in batch]
    expected = [e.schedule_id for p in (2, 1, 0) for e in events if e.priority == p]
    assert claimed == expected
    value = await store._redis.hget(store.payload_key, ids[0])
    assert isinstance(value, bytes) and value[20:22] == b":{"  # 21-byte member prefix


async def test_each_script_finds_the_member_from_the_value(store: RedisNearTermStore) -> None:
    await store.schedule([_event(60, sid="plain"), _event(60, priority=3, sid="urgent")])
    for sid in ("plain", "urgent"):
        assert await store.reschedule(sid, to_epoch_us(utc_now()) + 90_000_000)
        assert await store.cancel(sid)
    assert (await store.counts())["pending"] == 0


async def test_discard_of_a_written_copy_spares_a_newer_one(store: RedisNearTermStore) -> None:
    written = _event(60, sid="copy")
    await store.schedule([written])
    assert await store.reschedule("copy", to_epoch_us(utc_now()) + 120_000_000)  # a user moved it
    assert not await store.discard("copy", written)
    assert await store.get("copy") is not None
    moved = await store.get("copy")
    assert moved is not None
    assert await store.discard("copy", replace(moved, status=EventStatus.PENDING))
    assert await store.get("copy") is None


async def test_a_rotation_reseals_a_newer_version_waiting_for_its_firing(
    redis_client: Redis, unique: str
) -> None:
    """A version that came while its id was firing waits in ``next``; a rotation re-seals it
    too, so the old key can go before that firing ends."""
    k1, k2 = os.urandom(32), os.urandom(32)
    old = RedisNearTermStore(redis_client, f"rk-{unique}", 600, _cipher("k1", k1=k1))
    new = RedisNearTermStore(redis_client, f"rk-{unique}", 600, _cipher("k2", k1=k1, k2=k2))
    retired = RedisNearTermStore(redis_client, f"rk-{unique}", 600, _cipher("k2", k2=k2))
    try:
        first = _event(-1, sid="ev")
        await old.schedule([first])
        claim = await old.claim(to_epoch_us(utc_now()), 10, 30)
        assert [e.schedule_id for e in claim.events] == ["ev"]
        newer = replace(first, body=b"v2", scheduled_at=utc_now() - timedelta(seconds=1))
        assert await old.upsert([(newer, "2", True)]) == [3]  # waits for the firing to end
        cursor, rekeyed = "", 0
        while True:
            cursor, page = await new.rekey_page(cursor, 100)
            rekeyed += page.rekeyed
            if not cursor:
                break
        assert rekeyed == 2  # the leased payload and the waiting version
        await retired.ack(claim.token, [Finished("ev", EventStatus.COMPLETED)], None)
        again = await retired.claim(to_epoch_us(utc_now()), 10, 30)
        assert [(e.schedule_id, e.body) for e in again.events] == [("ev", b"v2")]
    finally:
        await old.delete_all()


def _cipher(current: str, **keys: bytes) -> PayloadCipher:
    return PayloadCipher(KeyRing(keys=keys, current=current, tenants={}))

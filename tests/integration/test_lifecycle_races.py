"""A cancel or reschedule racing a claim or the sync gives one documented outcome: either it is
applied (the event never fires at its old time), or it is refused because the event is being
fired (it is published) — never both, and never a stray row left in ClickHouse (real Valkey,
real chDB)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import timedelta

import pytest

from delayline.domain.events import EventStatus, to_epoch_us
from tests.integration.test_hybrid import HORIZON, TRANSFER, Hybrid, _event_at, hybrid

__all__ = ["hybrid"]  # the fixture

N = 120


async def _each(calls: list[Coroutine[object, object, bool]]) -> list[bool]:
    """Run ``calls`` concurrently, 8 at a time (the client's connection pool is bounded)."""
    slots = asyncio.Semaphore(8)

    async def one(call: Coroutine[object, object, bool]) -> bool:
        async with slots:
            return await call

    return list(await asyncio.gather(*(one(c) for c in calls)))


async def _through_clickhouse(h: Hybrid, prefix: str) -> list[str]:
    """N events stored in ClickHouse, then moved into Redis by the sync (``queued`` there)."""
    due = h.clock.now() + timedelta(seconds=HORIZON + 600)
    ids = [await _event_at(h, due + timedelta(microseconds=i), f"{prefix}{i}") for i in range(N)]
    h.clock.advance(HORIZON + 600 - TRANSFER / 2)
    assert await h.sync.sync_once() == N
    h.clock.advance(TRANSFER)  # all due now
    return ids


async def _claim_all(h: Hybrid, rounds: int = 6) -> set[str]:
    claimed: set[str] = set()
    for _ in range(rounds):
        claim = await h.near.claim(to_epoch_us(h.clock.now()), 20, 30)
        claimed |= {e.schedule_id for e in claim.events}
        await asyncio.sleep(0)
    return claimed


async def test_claim_vs_cancel(hybrid: Hybrid) -> None:
    ids = await _through_clickhouse(hybrid, "cc")
    early = await _claim_all(hybrid, rounds=1)  # some claimed before any cancel
    racing = asyncio.create_task(_claim_all(hybrid))
    cancels = await _each([hybrid.service.cancel_event(sid) for sid in ids])
    claimed = early | await racing
    claimed |= await _claim_all(hybrid)
    for sid, cancelled in zip(ids, cancels, strict=True):
        assert cancelled != (sid in claimed), sid  # exactly one of the two
        got = await hybrid.service.get_event(sid)
        assert got is not None
        assert got.status is (EventStatus.CANCELLED if cancelled else EventStatus.PROCESSING)
    assert early and not claimed.isdisjoint(ids)


async def _straight_into_redis(h: Hybrid, prefix: str) -> list[str]:
    due = h.clock.now() - timedelta(seconds=1)
    return [await _event_at(h, due + timedelta(microseconds=i), f"{prefix}{i}") for i in range(N)]


@pytest.mark.parametrize("source", ["clickhouse", "redis"])
async def test_claim_vs_reschedule_past_the_horizon(hybrid: Hybrid, source: str) -> None:
    if source == "clickhouse":
        ids = await _through_clickhouse(hybrid, "cr")
    else:
        ids = await _straight_into_redis(hybrid, "rr")
    later = hybrid.clock.now() + timedelta(days=3)
    early = await _claim_all(hybrid, rounds=1)
    racing = asyncio.create_task(_claim_all(hybrid))
    moved = await _each([hybrid.service.reschedule_event(sid, later) for sid in ids])
    claimed = early | await racing
    claimed |= await _claim_all(hybrid)
    for sid, ok in zip(ids, moved, strict=True):
        assert ok != (sid in claimed), sid
        stored = await hybrid.far.get(sid)
        if ok:  # waits in ClickHouse at its new time, nothing left in Redis
            assert stored is not None
            assert (stored.status, stored.scheduled_at) == (EventStatus.PENDING, later)
        else:  # being fired: no live row left behind to fire it a second time
            assert stored is None or stored.status in (EventStatus.QUEUED, EventStatus.CANCELLED)
    counts = await hybrid.far.counts()
    assert counts["processing"] == 0
    assert counts["pending"] == sum(moved)


async def test_sync_vs_cancel_and_reschedule(hybrid: Hybrid) -> None:
    h = hybrid
    due = h.clock.now() + timedelta(seconds=HORIZON + 600)
    ids = [await _event_at(h, due + timedelta(microseconds=i), f"s{i}") for i in range(N)]
    h.clock.advance(HORIZON + 600 - TRANSFER / 2)
    later = h.clock.now() + timedelta(days=3)
    cancel_ids, move_ids = ids[::3], ids[1::3]
    sync = asyncio.create_task(h.sync.sync_once())
    cancelled, moved = await asyncio.gather(
        _each([h.service.cancel_event(sid) for sid in cancel_ids]),
        _each([h.service.reschedule_event(sid, later) for sid in move_ids]),
    )
    await sync
    assert all(cancelled) and all(moved)  # nothing was being fired: every action applies
    h.clock.advance(TRANSFER)
    fired = await _claim_all(h, rounds=10)
    assert fired == set(ids) - set(cancel_ids) - set(move_ids)
    for sid in move_ids:
        stored = await h.far.get(sid)
        assert stored is not None
        assert (stored.status, stored.scheduled_at) == (EventStatus.PENDING, later)
    assert (await h.far.counts())["pending"] == len(move_ids)

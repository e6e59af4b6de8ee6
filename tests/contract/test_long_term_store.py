"""The LongTermStore contract, run against every implementation (see ``conftest.py``)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from delayline.domain.events import EventStatus, ScheduledEvent, new_event
from delayline.ports import DuePage, LongTermStore

NOW = datetime.now(UTC).replace(microsecond=0)


def _event(sid: str, days: float = 2, priority: int = 0) -> ScheduledEvent:
    return new_event(
        topic="orders",
        entity_type="order",
        action="expire",
        body={"id": sid},
        headers={"tenant": "t1"},
        correlation_id=f"c-{sid}",
        scheduled_at=NOW + timedelta(days=days),
        priority=priority,
        schedule_id=sid,
    )


def _ids(page: DuePage) -> list[str]:
    return [e.schedule_id for e in page.events]


class TestLongTermStore:
    async def test_insert_once_per_id_and_read_back(self, far: LongTermStore[Any]) -> None:
        original = _event("a", days=3, priority=7)
        assert await far.insert([original, _event("b")]) == [True, True]
        assert await far.insert([_event("a", days=9), _event("c")]) == [False, True]
        assert await far.get("a") == original
        assert await far.get("missing") is None
        assert await far.known(["a", "c", "missing"]) == {"a", "c"}
        assert (await far.counts())["pending"] == 3

    async def test_due_after_pages_in_due_order(self, far: LongTermStore[Any]) -> None:
        await far.insert(
            [
                _event("late", days=5),
                _event("low", days=2, priority=0),
                _event("high", days=2, priority=9),
                _event("first", days=1.5),
                _event("beyond", days=30),
            ]
        )
        until = NOW + timedelta(days=6)
        page = await far.due_after(until, 2, None)
        assert _ids(page) == ["first", "high"]
        last = page.events[-1]
        rest = await far.due_after(until, 10, (last.scheduled_at, last.priority, last.schedule_id))
        assert _ids(rest) == ["low", "late"]
        assert await far.next_due() == NOW + timedelta(days=1.5)

    async def test_mark_queued_hands_events_over_once(self, far: LongTermStore[Any]) -> None:
        await far.insert([_event("a"), _event("b"), _event("c")])
        until = NOW + timedelta(days=3)
        read = await far.due_after(until, 10, None)
        await far.cancel("b")  # changed after it was read
        assert await far.mark_queued(read) == ["b"]
        assert _ids(await far.due_after(until, 10, None)) == []
        queued = await far.get("a")
        assert queued is not None and queued.status is EventStatus.QUEUED
        assert (await far.counts())["queued"] == 2

    async def test_cancel_takes_live_events_only(self, far: LongTermStore[Any]) -> None:
        await far.insert([_event("a"), _event("b"), _event("c")])
        assert await far.cancel("a")
        assert not await far.cancel("a")
        assert not await far.cancel("missing")
        cancelled = await far.get("a")
        assert cancelled is not None and cancelled.status is EventStatus.CANCELLED
        assert await far.cancel_live("b") is EventStatus.PENDING
        assert await far.cancel_live("b") is None
        assert await far.cancel_many(["a", "c", "missing"]) == {"c": EventStatus.PENDING}

    async def test_reschedule_moves_pending_events(self, far: LongTermStore[Any]) -> None:
        await far.insert([_event("a", days=2), _event("b", days=3), _event("c", days=4)])
        assert await far.reschedule("a", NOW + timedelta(days=5))
        moved = await far.get("a")
        assert moved is not None and moved.scheduled_at == NOW + timedelta(days=5)
        await far.cancel("b")
        assert not await far.reschedule("b", NOW)
        assert not await far.reschedule("missing", NOW)
        many = await far.reschedule_many(["b", "c"], NOW + timedelta(days=6))
        assert list(many) == ["c"]
        assert many["c"].scheduled_at == NOW + timedelta(days=6)

    async def test_upsert_versions_an_id(self, far: LongTermStore[Any]) -> None:
        first = _event("a")
        assert await far.upsert([first]) == [1]
        assert await far.upsert([first]) == [0]  # same content: unchanged
        newer = replace(first, body=b"v2")
        assert await far.upsert([newer]) == [2]
        got = await far.get("a")
        assert got is not None and got.body == b"v2"
        await far.cancel("a")
        assert await far.upsert([first]) == [2]  # cancelled: scheduled again
        again = await far.get("a")
        assert again is not None and again.status is EventStatus.PENDING

    async def test_supersede_cancels_the_live_version(self, far: LongTermStore[Any]) -> None:
        await far.insert([_event("a"), _event("b")])
        await far.cancel("b")
        assert await far.supersede(["a", "b", "missing"]) == {"a"}
        gone = await far.get("a")
        assert gone is not None and gone.status is EventStatus.CANCELLED

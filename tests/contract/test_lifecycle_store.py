"""The LifecycleStore contract, run against every implementation (see ``conftest.py``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from delayline.domain.events import ScheduledEvent, new_event
from delayline.domain.outcomes import EventFilter, LifecycleEntry, Transition
from delayline.ports import LifecycleStore

AT = datetime(2030, 1, 1, tzinfo=UTC)


def _event(sid: str, correlation_id: str) -> ScheduledEvent:
    return new_event(
        topic="orders",
        scheduled_at=AT + timedelta(hours=1),
        schedule_id=sid,
        correlation_id=correlation_id,
        now=AT,
    )


def _entry(sid: str, seconds: float, transition: Transition, key: str = "k1") -> LifecycleEntry:
    return LifecycleEntry(
        sid, transition, AT + timedelta(seconds=seconds), _event(sid, key), node="n1"
    )


class TestLifecycleStore:
    async def test_history_comes_back_oldest_first(self, lifecycle: LifecycleStore) -> None:
        await lifecycle.write_entries(
            [_entry("a", 2, Transition.CLAIMED), _entry("a", 1, Transition.SCHEDULED)]
        )
        await lifecycle.write_entries([_entry("a", 3, Transition.COMPLETED)])
        history = await lifecycle.history("a")
        assert [e.transition for e in history] == [
            Transition.SCHEDULED,
            Transition.CLAIMED,
            Transition.COMPLETED,
        ]
        assert history[0].event is not None and history[0].event.correlation_id == "k1"
        assert await lifecycle.history("unknown") == []

    async def test_histories_of_many_events(self, lifecycle: LifecycleStore) -> None:
        await lifecycle.write_entries(
            [_entry("a", 1, Transition.SCHEDULED), _entry("b", 1, Transition.SCHEDULED)]
        )
        found = await lifecycle.histories(["a", "b", "unknown"])
        assert {sid: len(h) for sid, h in found.items() if h} == {"a": 1, "b": 1}

    async def test_find_by_key_pages_in_id_order(self, lifecycle: LifecycleStore) -> None:
        await lifecycle.write_entries(
            [_entry(sid, 1, Transition.SCHEDULED, key="k1") for sid in ("c", "a", "b")]
            + [_entry("z", 1, Transition.SCHEDULED, key="other")]
        )
        match = EventFilter(correlation_id="k1")
        assert await lifecycle.find(match) == ["a", "b", "c"]
        assert await lifecycle.find(match, after="a", limit=1) == ["b"]

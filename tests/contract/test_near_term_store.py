"""The NearTermStore contract, run against every implementation (see ``conftest.py``)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from delayline.domain.events import EventStatus, ScheduledEvent, new_event, to_epoch_us, utc_now
from delayline.ports import Finished, NearTermStore


def _event(
    sid: str, offset_s: float, priority: int = 0, *, at: datetime | None = None
) -> ScheduledEvent:
    """An event due ``offset_s`` after ``at`` (default: now)."""
    return new_event(
        topic="t",
        entity_type="user",
        action="remind",
        body=b'{"a": 1}',
        scheduled_at=(at or utc_now()) + timedelta(seconds=offset_s),
        priority=priority,
        schedule_id=sid,
        correlation_id="order-1",
    )


def _now_us() -> int:
    return to_epoch_us(utc_now())


class TestNearTermStore:
    async def test_schedule_inserts_once_per_id(self, near: NearTermStore) -> None:
        first = _event("a", 60)
        assert await near.schedule([first]) == [True]
        assert await near.schedule([replace(first, topic="other"), _event("b", 60)]) == [
            False,
            True,
        ]
        got = await near.get("a")
        assert got is not None
        assert (got.topic, got.body, got.status) == ("t", b'{"a": 1}', EventStatus.PENDING)
        assert got.correlation_id == "order-1"
        assert await near.known(["a", "b", "unknown"]) == {"a", "b"}
        assert await near.get("unknown") is None

    async def test_claim_takes_due_events_by_time_then_priority(self, near: NearTermStore) -> None:
        at = utc_now()
        await near.schedule(
            [
                _event("low", -1, 0, at=at),
                _event("high", -1, 5, at=at),
                _event("early", -2, at=at),
                _event("later", 60, at=at),
            ]
        )
        assert await near.next_due_us() is not None
        claim = await near.claim(_now_us(), 10, 30)
        assert [e.schedule_id for e in claim.events] == ["early", "high", "low"]
        assert claim.next_due_us == (await near.get("later") or _event("x", 0)).due_us
        assert (await near.claim(_now_us(), 10, 30)).events == []  # leased: not claimed twice
        leased = await near.get("high")
        assert leased is not None and leased.status is EventStatus.PROCESSING
        counts = await near.counts()
        assert (counts["pending"], counts["processing"]) == (1, 3)

    async def test_claim_respects_the_limit(self, near: NearTermStore) -> None:
        await near.schedule([_event(f"e{i}", -10 + i) for i in range(5)])
        first = await near.claim(_now_us(), 2, 30)
        rest = await near.claim(_now_us(), 10, 30)
        assert [e.schedule_id for e in first.events] == ["e0", "e1"]
        assert [e.schedule_id for e in rest.events] == ["e2", "e3", "e4"]

    async def test_ack_needs_the_lease_token_and_remembers_the_outcome(
        self, near: NearTermStore
    ) -> None:
        await near.schedule([_event("a", -1)])
        claim = await near.claim(_now_us(), 10, 30)
        done = [Finished("a", EventStatus.COMPLETED)]
        assert await near.ack("not-the-token", done, None) == 0
        assert await near.ack(claim.token, done, None) == 1
        assert await near.ack(claim.token, done, None) == 0  # once
        got = await near.get("a")
        assert got is not None and got.status is EventStatus.COMPLETED
        assert await near.schedule([_event("a", 10)]) == [False]  # a fired id stays known

    async def test_retry_returns_a_leased_event_at_its_new_time(self, near: NearTermStore) -> None:
        await near.schedule([_event("a", -1)])
        claim = await near.claim(_now_us(), 10, 30)
        again = replace(claim.events[0], attempts=1, last_error="broker down")
        later = _now_us() + 3_600_000_000
        assert await near.retry(claim.token, again, later)
        assert (await near.claim(_now_us(), 10, 30)).events == []
        retried = await near.claim(later, 10, 30)
        assert [e.schedule_id for e in retried.events] == ["a"]
        assert retried.events[0].attempts == 1

    async def test_reap_returns_expired_leases(self, near: NearTermStore) -> None:
        await near.schedule([_event("a", -1)])
        await near.claim(_now_us(), 10, 0.05)
        assert await near.reap(_now_us() + 60_000_000) == 1
        again = await near.claim(_now_us() + 60_000_000, 10, 30)
        assert [e.schedule_id for e in again.events] == ["a"]

    async def test_cancel_takes_pending_events_only(self, near: NearTermStore) -> None:
        await near.schedule([_event("pending", 60), _event("firing", -1)])
        await near.claim(_now_us(), 10, 30)
        assert await near.cancel("pending")
        assert not await near.cancel("pending")
        assert not await near.cancel("firing")  # being fired: not recalled
        cancelled = await near.get("pending")
        assert cancelled is not None and cancelled.status is EventStatus.CANCELLED
        assert await near.cancel_many(["firing", "unknown"]) == [False, False]

    async def test_reschedule_moves_a_pending_event(self, near: NearTermStore) -> None:
        await near.schedule([_event("a", 3600)])
        assert await near.reschedule("a", _now_us() - 1)
        assert [e.schedule_id for e in (await near.claim(_now_us(), 10, 30)).events] == ["a"]
        assert not await near.reschedule("a", _now_us())  # leased now
        assert not await near.reschedule("unknown", _now_us())

    async def test_discard_removes_only_the_copy_written(self, near: NearTermStore) -> None:
        written = _event("a", 60)
        await near.schedule([written])
        assert not await near.discard("a", replace(written, body=b"another copy"))
        assert await near.discard("a", written)
        assert await near.get("a") is None
        assert await near.schedule([written]) == [True]  # not remembered: may come again

    async def test_upsert_replaces_a_pending_version(self, near: NearTermStore) -> None:
        first = _event("a", 60)
        assert await near.upsert([(first, "r1#h1", True)]) == [1]
        assert await near.upsert([(first, "r1#h1", True)]) == [0]  # a redelivery
        newer = replace(first, body=b"v2")
        assert await near.upsert([(newer, "r2#h2", True)]) == [2]
        got = await near.get("a")
        assert got is not None and got.body == b"v2"

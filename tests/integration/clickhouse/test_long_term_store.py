"""The ClickHouse long-term store against the real engine (chDB, or a server)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from delayline.adapters.clickhouse.client import ClickHouseClient
from delayline.adapters.clickhouse.long_term_store import ClickHouseLongTermStore
from delayline.adapters.clickhouse.rows import successor
from delayline.domain.events import EventStatus, ScheduledEvent, new_event

NOW = datetime.now(UTC).replace(microsecond=0)


def event(sid: str, days: float = 2, priority: int = 0, **extra: Any) -> ScheduledEvent:
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
        **extra,
    )


async def test_insert_then_get_round_trips_every_field(lt_store: ClickHouseLongTermStore) -> None:
    original = event("a1", days=3, priority=7, max_delay_seconds=600)
    assert await lt_store.insert([original]) == [True]
    got = await lt_store.get("a1")
    assert got == original
    assert await lt_store.get("missing") is None


async def test_insert_is_idempotent_by_schedule_id(lt_store: ClickHouseLongTermStore) -> None:
    assert await lt_store.insert([event("x"), event("y")]) == [True, True]
    assert await lt_store.insert([event("x", days=9), event("z"), event("z")]) == [
        False,
        True,
        False,
    ]
    got = await lt_store.get("x")
    assert got is not None and got.scheduled_at == NOW + timedelta(days=2)
    counts = await lt_store.counts()
    assert counts["pending"] == 3


class CountingClient:
    """Forwards to a client, counting Arrow inserts."""

    def __init__(self, inner: ClickHouseClient) -> None:
        self.inner = inner
        self.database = inner.database
        self.cluster = inner.cluster
        self.arrow_inserts: list[int] = []

    async def query(
        self, sql: str, parameters: Any = None, *, column_formats: Any = None
    ) -> Sequence[Sequence[Any]]:
        return await self.inner.query(sql, parameters, column_formats=column_formats)

    async def query_arrow(self, sql: str, parameters: Any = None) -> pa.Table:
        return await self.inner.query_arrow(sql, parameters)

    async def command(self, sql: str, parameters: Any = None) -> Any:
        return await self.inner.command(sql, parameters)

    async def insert_arrow(self, table: str, data: pa.Table) -> None:
        self.arrow_inserts.append(data.num_rows)
        await self.inner.insert_arrow(table, data)


async def test_bulk_insert_of_10k_events_is_one_arrow_insert(ch_client: ClickHouseClient) -> None:
    counting = CountingClient(ch_client)
    store = ClickHouseLongTermStore(counting)
    events = [event(f"bulk-{i}", days=2 + i / 10_000) for i in range(10_000)]
    assert await store.insert(events) == [True] * 10_000
    assert counting.arrow_inserts == [10_000]
    assert (await store.counts())["pending"] == 10_000
    assert await store.get("bulk-9999") == events[-1]


async def test_due_before_orders_by_time_then_priority(lt_store: ClickHouseLongTermStore) -> None:
    await lt_store.insert(
        [
            event("late", days=5),
            event("low", days=2, priority=0),
            event("high", days=2, priority=9),
            event("first", days=1.5),
            event("beyond", days=30),
        ]
    )
    due = await lt_store.due_before(NOW + timedelta(days=5), limit=10)
    assert [e.schedule_id for e in due.events] == ["first", "high", "low", "late"]
    assert [
        e.schedule_id for e in (await lt_store.due_before(NOW + timedelta(days=3), 2)).events
    ] == [
        "first",
        "high",
    ]
    assert await lt_store.next_due() == NOW + timedelta(days=1.5)


async def test_cancel_only_live_events(lt_store: ClickHouseLongTermStore) -> None:
    await lt_store.insert([event("c1"), event("c2")])
    assert await lt_store.cancel("c1") is True
    assert await lt_store.cancel("c1") is False
    assert await lt_store.cancel("nope") is False
    got = await lt_store.get("c1")
    assert got is not None and got.status == EventStatus.CANCELLED
    assert [
        e.schedule_id for e in (await lt_store.due_before(NOW + timedelta(days=9), 10)).events
    ] == ["c2"]
    counts = await lt_store.counts()
    assert counts["cancelled"] == 1 and counts["pending"] == 1


async def test_reschedule_moves_the_due_time(lt_store: ClickHouseLongTermStore) -> None:
    await lt_store.insert([event("r1", days=2), event("r2", days=3)])
    assert await lt_store.reschedule("r1", NOW + timedelta(days=4)) is True
    due = await lt_store.due_before(NOW + timedelta(days=10), 10)
    assert [(e.schedule_id, e.scheduled_at) for e in due.events] == [
        ("r2", NOW + timedelta(days=3)),
        ("r1", NOW + timedelta(days=4)),
    ]
    await lt_store.cancel("r2")
    assert await lt_store.reschedule("r2", NOW) is False
    assert await lt_store.reschedule("missing", NOW) is False


async def test_mark_queued_reports_events_changed_since_the_read(
    lt_store: ClickHouseLongTermStore,
) -> None:
    await lt_store.insert([event("q1"), event("q2"), event("q3")])
    read = await lt_store.due_before(NOW + timedelta(days=3), 10)
    # After the sync's read: one cancelled, one rescheduled.
    await lt_store.cancel("q2")
    await lt_store.reschedule("q3", NOW + timedelta(days=2, hours=1))
    assert sorted(await lt_store.mark_queued(read)) == ["q2", "q3"]
    states = {sid: await lt_store.get(sid) for sid in ("q1", "q2", "q3")}
    assert {sid: e.status for sid, e in states.items() if e} == {
        "q1": EventStatus.QUEUED,
        "q2": EventStatus.CANCELLED,
        "q3": EventStatus.PENDING,
    }
    # Queued events are no longer due here; the rescheduled one is, at its new time.
    again = await lt_store.due_before(NOW + timedelta(days=3), 10)
    assert [(e.schedule_id, e.scheduled_at) for e in again.events] == [
        ("q3", NOW + timedelta(days=2, hours=1))
    ]


async def test_cancel_beats_a_queued_row_written_after_it(
    lt_store: ClickHouseLongTermStore,
) -> None:
    """The race window: mark_queued saw 'pending', a cancel landed, then 'queued' is written."""
    await lt_store.insert([event("w1")])
    read = await lt_store.due_before(NOW + timedelta(days=3), 10)
    stale_store_view = await lt_store._table.current(["w1"])  # what mark_queued read
    assert await lt_store.cancel("w1") is True
    row = stale_store_view["w1"]
    queued = row.event.with_status(EventStatus.QUEUED, at=datetime.now(UTC))
    await lt_store._table.write([successor(row, queued, 1)])  # the late queued row lands
    got = await lt_store.get("w1")
    assert got is not None and got.status == EventStatus.CANCELLED
    assert read.events[0].schedule_id == "w1"
    # And a cancel after the event was queued still wins over the queued row.
    await lt_store.insert([event("w2")])
    assert await lt_store.mark_queued(await lt_store.due_before(NOW + timedelta(days=3), 5)) == []
    assert await lt_store.cancel("w2") is True
    got2 = await lt_store.get("w2")
    assert got2 is not None and got2.status == EventStatus.CANCELLED


async def test_mark_queued_racing_cancels_never_loses_a_cancel(
    lt_store: ClickHouseLongTermStore,
) -> None:
    ids = [f"race-{i}" for i in range(200)]
    await lt_store.insert([event(i) for i in ids])
    read = await lt_store.due_before(NOW + timedelta(days=3), 1000)
    cancelled_ids = ids[::2]
    marking = asyncio.ensure_future(lt_store.mark_queued(read))
    cancels = await asyncio.gather(*(lt_store.cancel(i) for i in cancelled_ids))
    changed = set(await marking)
    assert all(cancels)  # every cancel found the event live
    final = {i: await lt_store.get(i) for i in ids}
    for sid, got in final.items():
        assert got is not None
        if sid in cancelled_ids:
            assert got.status == EventStatus.CANCELLED, sid
        else:
            assert got.status == EventStatus.QUEUED, sid
            assert sid not in changed
    assert changed <= set(cancelled_ids)


async def test_mark_status_and_cleanup_leave_live_events_alone(
    lt_store: ClickHouseLongTermStore,
) -> None:
    await lt_store.insert([event(f"k{i}") for i in range(6)])
    await lt_store.mark_queued(await lt_store.due_before(NOW + timedelta(days=3), 2))  # k0, k1
    assert await lt_store.mark_status(["k1", "k2"], EventStatus.COMPLETED) == 2
    assert await lt_store.mark_status(["k3"], EventStatus.FAILED, "broker down") == 1
    await lt_store.cancel("k4")
    assert await lt_store.mark_status(["k4"], EventStatus.COMPLETED) == 0  # already final
    failed = await lt_store.get("k3")
    assert failed is not None and failed.last_error == "broker down"

    assert await lt_store.cleanup(datetime.now(UTC) - timedelta(days=1)) == 0  # too recent
    assert await lt_store.cleanup(datetime.now(UTC) + timedelta(seconds=1)) == 4
    assert await lt_store.cleanup(datetime.now(UTC) + timedelta(seconds=1)) == 0
    for gone in ("k1", "k2", "k3", "k4"):
        assert await lt_store.get(gone) is None
    remaining = await lt_store.counts()
    assert remaining["queued"] == 1 and remaining["pending"] == 1
    assert sum(remaining.values()) == 2


async def test_cleanup_removes_queued_events_due_before_the_window(
    lt_store: ClickHouseLongTermStore,
) -> None:
    """Handed to Redis long ago: their outcome is elsewhere. Recent or pending ones stay."""
    await lt_store.insert([event("q-old", days=1), event("p", days=1.5), event("q-new", days=5)])
    due = await lt_store.due_before(NOW + timedelta(days=6), 3)
    assert await lt_store.mark_queued(due.without({"p"})) == []
    assert await lt_store.cleanup(NOW) == 0  # none was due before now
    assert await lt_store.cleanup(NOW + timedelta(days=2)) == 1
    assert await lt_store.get("q-old") is None
    pending, recent = await lt_store.get("p"), await lt_store.get("q-new")
    assert pending is not None and pending.status is EventStatus.PENDING
    assert recent is not None and recent.status is EventStatus.QUEUED

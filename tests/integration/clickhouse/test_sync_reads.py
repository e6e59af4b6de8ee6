"""The sync's reads without FINAL: the ``listed_at`` rule, paging, races, ties, the upgrade."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from delayline.adapters.clickhouse.client import ClickHouseClient
from delayline.adapters.clickhouse.long_term_store import ClickHouseLongTermStore, DuePage
from delayline.adapters.clickhouse.migrations import (
    BY_LISTED_PROJECTION,
    CORE_MIGRATIONS,
    EVENTS_TABLE,
    run_migrations,
)
from delayline.adapters.clickhouse.rows import successor
from delayline.adapters.redis_lease import RedisLease
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.clock import ManualClock
from delayline.domain.events import EventStatus, ScheduledEvent, new_event, to_epoch_us
from delayline.services.sync import SyncService
from tests.support import PagedFar

NOW = datetime.now(UTC).replace(microsecond=0)


def event(sid: str, days: float = 2, priority: int = 0) -> ScheduledEvent:
    return new_event(
        topic="orders",
        body={"id": sid},
        headers={"h": "1"},
        scheduled_at=NOW + timedelta(days=days),
        priority=priority,
        schedule_id=sid,
    )


def ids(events: Sequence[ScheduledEvent]) -> list[str]:
    return [e.schedule_id for e in events]


async def test_an_event_rescheduled_later_is_not_due_at_its_old_time(
    lt_store: ClickHouseLongTermStore,
) -> None:
    # The old pending row (due in 2 days) stays until a merge; the new one is due in 9 days.
    await lt_store.insert([event("r1", days=2), event("r2", days=2, priority=1)])
    assert await lt_store.reschedule("r1", NOW + timedelta(days=9))
    assert ids((await lt_store.due_before(NOW + timedelta(days=3), 10)).events) == ["r2"]
    due = await lt_store.due_before(NOW + timedelta(days=10), 10)
    assert [(e.schedule_id, e.scheduled_at) for e in due.events] == [
        ("r2", NOW + timedelta(days=2)),
        ("r1", NOW + timedelta(days=9)),
    ]


async def test_rescheduled_between_the_read_and_mark_queued_is_taken_back(
    lt_store: ClickHouseLongTermStore,
) -> None:
    await lt_store.insert([event("a"), event("b"), event("c")])
    read = await lt_store.due_before(NOW + timedelta(days=3), 10)
    assert await lt_store.reschedule("b", NOW + timedelta(days=20))  # later: out of the prefix
    assert await lt_store.reschedule("c", NOW + timedelta(days=1))  # earlier
    assert sorted(await lt_store.mark_queued(read)) == ["b", "c"]
    states = {sid: await lt_store.get(sid) for sid in ("a", "b", "c")}
    assert {sid: (e.status, e.scheduled_at) for sid, e in states.items() if e} == {
        "a": (EventStatus.QUEUED, NOW + timedelta(days=2)),
        "b": (EventStatus.PENDING, NOW + timedelta(days=20)),
        "c": (EventStatus.PENDING, NOW + timedelta(days=1)),
    }
    assert ids((await lt_store.due_before(NOW + timedelta(days=3), 10)).events) == ["c"]


async def test_pages_follow_each_other_without_gaps_or_repeats(
    lt_store: ClickHouseLongTermStore,
) -> None:
    events = [event(f"p{i:02d}", days=2 + (i % 5) / 10, priority=i % 3) for i in range(40)]
    await lt_store.insert(events)
    await lt_store.cancel("p07")
    expected = sorted(
        (e for e in events if e.schedule_id != "p07"),
        key=lambda e: (e.scheduled_at, -e.priority, e.schedule_id),
    )
    until = NOW + timedelta(days=3)
    pages: list[DuePage] = []
    after = None
    while True:
        page = await lt_store.due_after(until, 6, after)
        pages.append(page)
        if len(page.events) < 6:
            break
        last = page.events[-1]
        after = (last.scheduled_at, last.priority, last.schedule_id)
    assert [e for p in pages for e in p.events] == expected  # every field, as inserted
    # Marking each page queued after the next was already read changes nothing of that.
    for page in pages:
        assert await lt_store.mark_queued(page) == []
    assert (await lt_store.due_before(until, 100)).events == []


async def test_queued_rows_not_merged_yet_are_paged_over(
    lt_store: ClickHouseLongTermStore,
) -> None:
    await lt_store.insert([event(f"q{i:02d}", days=2 + i / 1000) for i in range(30)])
    first = await lt_store.due_before(NOW + timedelta(days=3), 20)
    assert await lt_store.mark_queued(first) == []
    # 20 stale pending rows come first in the order; a page of 5 still finds the other 10.
    rest = await lt_store.due_before(NOW + timedelta(days=3), 5)
    assert ids(rest.events) == [f"q{i:02d}" for i in range(20, 25)]


async def test_equal_versions_resolve_as_final_does(
    ch_client: ClickHouseClient, lt_store: ClickHouseLongTermStore
) -> None:
    """Two user actions on one event at once both write ``c + 2``; the later insert wins."""
    await lt_store.insert([event("t1"), event("t2")])
    for sid, last in (("t1", EventStatus.CANCELLED), ("t2", EventStatus.PENDING)):
        row = (await lt_store._table.current([sid]))[sid]
        cancelled = row.event.with_status(EventStatus.CANCELLED, at=datetime.now(UTC))
        moved = row.event.with_status(EventStatus.PENDING, at=datetime.now(UTC))
        moved = replace(moved, scheduled_at=NOW + timedelta(days=1))
        order = [moved, cancelled] if last is EventStatus.CANCELLED else [cancelled, moved]
        for version in order:
            await lt_store._table.write([successor(row, version, 2)])
    final = await ch_client.query(
        f"SELECT schedule_id, CAST(status, 'String') FROM {ch_client.database}.{EVENTS_TABLE} "
        "FINAL ORDER BY schedule_id"
    )
    assert [tuple(r) for r in final] == [("t1", "cancelled"), ("t2", "pending")]
    due = await lt_store.due_before(NOW + timedelta(days=3), 10)
    assert [(e.schedule_id, e.scheduled_at) for e in due.events] == [
        ("t2", NOW + timedelta(days=1))
    ]


async def test_upgrade_from_migration_1_keeps_the_sync_exact(
    clickhouse_root: ClickHouseClient,
) -> None:
    client = clickhouse_root.with_database(f"u_{uuid.uuid4().hex[:12]}")
    await client.start()
    try:
        assert await run_migrations(client, ttl_days=30, migrations=CORE_MIGRATIONS[:1])
        table = f"{client.database}.{EVENTS_TABLE}"
        # What version 1 of the code wrote: an event rescheduled later (its old pending row
        # still there), a cancelled one and a plain one, in separate parts.
        old = [
            ("moved", 2, "pending", 1),
            ("moved", 9, "pending", 3),
            ("gone", 2, "pending", 1),
            ("gone", 2, "cancelled", 3),
            ("kept", 2, "pending", 1),
        ]
        for sid, days, status, version in old:
            due = to_epoch_us(NOW + timedelta(days=days))
            await client.command(
                f"INSERT INTO {table} (schedule_id, topic, entity_type, action, body, "
                "correlation_id, headers, scheduled_at, status, created_at, updated_at, "
                "version, retain_from) VALUES ({sid:String}, 'orders', '', '', 'b', '', '', "
                "fromUnixTimestamp64Micro({due:Int64}, 'UTC'), {status:String}, now64(6), "
                "now64(6), {version:UInt64}, fromUnixTimestamp64Micro({due:Int64}, 'UTC'))",
                {"sid": sid, "due": due, "status": status, "version": version},
            )
        applied = await run_migrations(client, ttl_days=30)
        assert applied[0] == CORE_MIGRATIONS[1][1]
        parts = await client.query(
            "SELECT projections FROM system.parts WHERE database = {db:String} "
            "AND table = {t:String} AND active",
            {"db": client.database, "t": EVENTS_TABLE},
        )
        assert parts and all(BY_LISTED_PROJECTION in list(p[0]) for p in parts)
        store = ClickHouseLongTermStore(client)
        assert ids((await store.due_before(NOW + timedelta(days=3), 10)).events) == ["kept"]
        assert ids((await store.due_before(NOW + timedelta(days=10), 10)).events) == [
            "kept",
            "moved",
        ]
        assert await run_migrations(client, ttl_days=30) == []
        # New writes after the upgrade follow the rule.
        assert await store.reschedule("kept", NOW + timedelta(days=5))
        assert ids((await store.due_before(NOW + timedelta(days=3), 10)).events) == []
    finally:
        await client.command(f"DROP DATABASE IF EXISTS {client.database} SYNC")


async def test_pipelined_sync_with_a_reschedule_racing_it(
    lt_store: ClickHouseLongTermStore, store: RedisNearTermStore, redis_client: Redis
) -> None:
    clock = ManualClock()
    start = clock.now()
    events = [
        new_event(
            topic="t",
            body="x",
            scheduled_at=start + timedelta(days=2, seconds=i),
            schedule_id=f"s{i:02d}",
            now=start,
        )
        for i in range(25)
    ]
    await lt_store.insert(events)

    async def reschedule() -> None:  # right after the sync's first read
        assert await lt_store.reschedule("s03", start + timedelta(days=30))

    racing = PagedFar(lt_store, after_page={1: reschedule})
    sync = SyncService(
        store,
        racing,
        RedisLease(redis_client, f"{store.due_key[:-4]}:sync", ttl=30),
        clock,
        transfer_horizon_seconds=3600,
        retention_days=90,
        batch_size=4,
    )
    clock.set(start + timedelta(days=2))
    assert await sync.sync_once() == 24
    assert racing.pages >= 7  # read page by page, each ahead of its mark_queued
    claim = await store.claim(to_epoch_us(start + timedelta(days=3)), 100, 30)
    got = sorted(e.schedule_id for e in claim.events)
    assert got == sorted(e.schedule_id for e in events if e.schedule_id != "s03")
    moved = await lt_store.get("s03")
    assert moved is not None
    assert (moved.status, moved.scheduled_at) == (EventStatus.PENDING, start + timedelta(days=30))
    assert await sync.sync_once() == 0  # nothing doubled

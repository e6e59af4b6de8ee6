"""The sync stays consistent without FINAL: merges, cleanup with the projection, a migration
interrupted halfway, paging ties, races with reschedules, and the pipelined sync's tasks."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from redis.asyncio import Redis

from delayline.adapters.clickhouse.client import ClickHouseClient
from delayline.adapters.clickhouse.long_term_store import ClickHouseLongTermStore, DuePage
from delayline.adapters.clickhouse.migrations import (
    BY_LISTED_PROJECTION,
    CORE_MIGRATIONS,
    EVENTS_TABLE,
    run_migrations,
)
from delayline.adapters.redis_lease import RedisLease
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.clock import ManualClock
from delayline.domain.events import EventStatus, ScheduledEvent, new_event, to_epoch_us
from delayline.services.sync import SyncService
from tests.support import ForwardingNear, PagedFar

NOW = datetime.now(UTC).replace(microsecond=0)
UNTIL = NOW + timedelta(days=3)


def event(sid: str, days: float = 2, priority: int = 0) -> ScheduledEvent:
    return new_event(
        topic="orders",
        body={"id": sid},
        scheduled_at=NOW + timedelta(days=days),
        priority=priority,
        schedule_id=sid,
    )


def ids(events: Sequence[ScheduledEvent]) -> list[str]:
    return [e.schedule_id for e in events]


def table(client: ClickHouseClient) -> str:
    return f"{client.database}.{EVENTS_TABLE}"


async def fill(client: ClickHouseClient, n: int = 20_000) -> None:
    """``n`` pending events due in 50 days, merged into one part with the rows already
    there: enough rows that the planner reads the sync's queries from ``by_listed``."""
    await client.command(
        f"INSERT INTO {table(client)} (schedule_id, topic, body, correlation_id, headers, "
        "scheduled_at, status, created_at, updated_at, version, retain_from, listed_at) "
        "SELECT concat('filler-', toString(number)), 't', 'b', '', '', "
        "now64(6) + INTERVAL 50 DAY, 'pending', now64(6), now64(6), 1, "
        "now64(6) + INTERVAL 50 DAY, now64(6) + INTERVAL 50 DAY "
        f"FROM numbers({n})"
    )
    await client.command(f"OPTIMIZE TABLE {table(client)} FINAL")


async def reads_the_projection(client: ClickHouseClient) -> bool:
    plan = await client.query(
        f"EXPLAIN SELECT schedule_id FROM {table(client)} "
        f"WHERE listed_at <= fromUnixTimestamp64Micro({to_epoch_us(UNTIL)}, 'UTC')"
    )
    return any(f"({BY_LISTED_PROJECTION})" in str(r[0]) for r in plan)


async def projection_ids(client: ClickHouseClient) -> list[str]:
    """The ids of the non-filler rows stored in the projection (what a read from it sees)."""
    rows = await client.query(
        "SELECT schedule_id FROM mergeTreeProjection({db:Identifier}, {t:Identifier}, "
        "{p:Identifier}) WHERE NOT startsWith(schedule_id, 'filler-') ORDER BY schedule_id",
        {"db": client.database, "t": EVENTS_TABLE, "p": BY_LISTED_PROJECTION},
    )
    return [str(r[0]) for r in rows]


# --- another sync's queued row, once merged, must not make this one take the event back ---


async def test_queued_by_another_sync_then_merged_is_not_taken_back(
    ch_client: ClickHouseClient, lt_store: ClickHouseLongTermStore
) -> None:
    await lt_store.insert([event("m1"), event("m2"), event("m3")])
    mine = await lt_store.due_before(UNTIL, 10)
    theirs = await lt_store.due_before(UNTIL, 10)  # a second sync (its lease had expired)
    assert await lt_store.mark_queued(theirs) == []
    # A merge collapses each event to its queued row: the pending row this page read is gone.
    await ch_client.command(f"OPTIMIZE TABLE {table(ch_client)} FINAL")
    # Before the fix: ['m1', 'm2', 'm3'], so the sync discarded them from Redis while
    # ClickHouse says queued: lost.
    assert await lt_store.mark_queued(mine) == []
    for sid in ("m1", "m2", "m3"):
        got = await lt_store.get(sid)
        assert got is not None and got.status is EventStatus.QUEUED


async def test_cancelled_then_merged_is_still_taken_back(
    ch_client: ClickHouseClient, lt_store: ClickHouseLongTermStore
) -> None:
    await lt_store.insert([event("c1"), event("c2"), event("c3")])
    page = await lt_store.due_before(UNTIL, 10)
    assert await lt_store.cancel("c2")
    assert await lt_store.reschedule("c3", NOW + timedelta(days=40))
    await ch_client.command(f"OPTIMIZE TABLE {table(ch_client)} FINAL")
    assert sorted(await lt_store.mark_queued(page)) == ["c2", "c3"]
    states = {sid: await lt_store.get(sid) for sid in ("c1", "c2", "c3")}
    assert {sid: e.status for sid, e in states.items() if e} == {
        "c1": EventStatus.QUEUED,
        "c2": EventStatus.CANCELLED,
        "c3": EventStatus.PENDING,
    }


async def test_two_syncs_and_a_merge_lose_nothing_in_redis(
    ch_client: ClickHouseClient,
    lt_store: ClickHouseLongTermStore,
    store: RedisNearTermStore,
    redis_client: Redis,
) -> None:
    clock = ManualClock(NOW + timedelta(days=2))
    await lt_store.insert([event(f"s{i}", days=2 + i / 86400) for i in range(5)])

    def sync(far: Any, name: str) -> SyncService[DuePage]:
        lease = RedisLease(redis_client, f"{store.due_key[:-4]}:{name}", ttl=30)
        return SyncService(
            store, far, lease, clock, transfer_horizon_seconds=3600, retention_days=90
        )

    other = sync(lt_store, "lease-b")

    async def other_sync_then_merge() -> None:  # right after this sync's first read
        await other.sync_once()
        await ch_client.command(f"OPTIMIZE TABLE {table(ch_client)} FINAL")

    first = sync(PagedFar(lt_store, after_page={1: other_sync_then_merge}), "lease-a")
    await first.sync_once()
    claim = await store.claim(to_epoch_us(NOW + timedelta(days=3)), 100, 30)
    assert sorted(ids(claim.events)) == [f"s{i}" for i in range(5)]


# --- cleanup (lightweight DELETE) and the projection ---


async def test_cleanup_removes_the_rows_from_the_projection(
    ch_client: ClickHouseClient, lt_store: ClickHouseLongTermStore
) -> None:
    await lt_store.insert([event(f"k{i}") for i in range(6)])
    await fill(ch_client)
    assert await lt_store.mark_status(["k0", "k1", "k2"], EventStatus.COMPLETED) == 3
    assert await lt_store.cleanup(datetime.now(UTC) + timedelta(seconds=1)) == 3
    assert await projection_ids(ch_client) == ["k3", "k4", "k5"]


async def test_an_id_scheduled_again_after_cleanup_is_synced(
    ch_client: ClickHouseClient, lt_store: ClickHouseLongTermStore
) -> None:
    """Ids are the caller's (dedup keys): after cleanup the same id may be scheduled anew."""
    await lt_store.insert([event("again"), event("other")])
    await fill(ch_client)
    assert await reads_the_projection(ch_client)
    assert await lt_store.mark_status(["again"], EventStatus.COMPLETED) == 1
    assert await lt_store.cleanup(datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert await lt_store.get("again") is None
    assert await lt_store.insert([event("again", days=2.5)]) == [True]
    # Before the fix: ['other'] — the deleted 'completed' version 3, still in the
    # projection, outranked the new version 1: the new event was never moved (lost).
    assert ids((await lt_store.due_before(UNTIL, 10)).events) == ["other", "again"]


async def test_ttl_expiry_leaves_no_row_in_the_projection(
    ch_client: ClickHouseClient, lt_store: ClickHouseLongTermStore
) -> None:
    await lt_store.insert([event("live")])
    old = datetime.now(UTC) - timedelta(days=400)
    await ch_client.command(
        f"INSERT INTO {table(ch_client)} (schedule_id, topic, body, correlation_id, headers, "
        "scheduled_at, status, created_at, updated_at, version, retain_from, listed_at) VALUES "
        "('expired', 't', 'b', '', '', {old:DateTime64(6)}, 'pending', now64(6), now64(6), 1, "
        "{old:DateTime64(6)}, {old:DateTime64(6)})",
        {"old": old.replace(tzinfo=None)},
    )
    await ch_client.command(f"OPTIMIZE TABLE {table(ch_client)} FINAL")
    assert await projection_ids(ch_client) == ["live"]
    assert ids((await lt_store.due_before(UNTIL, 10)).events) == ["live"]


# --- the upgrade: migration 2 interrupted halfway, then run again ---


@pytest.mark.parametrize("done", [1, 3, 4])
async def test_migration_2_interrupted_after_some_statements_converges(
    clickhouse_root: ClickHouseClient, done: int
) -> None:
    client = clickhouse_root.with_database(f"u_{uuid.uuid4().hex[:12]}")
    await client.start()
    try:
        assert await run_migrations(client, ttl_days=30, migrations=CORE_MIGRATIONS[:1])
        store = ClickHouseLongTermStore(client)
        # Version-1 rows: an event rescheduled later (old pending row not merged away).
        for days, version in ((2, 1), (9, 3)):
            due = to_epoch_us(NOW + timedelta(days=days))
            await client.command(
                f"INSERT INTO {table(client)} (schedule_id, topic, entity_type, action, body, "
                "correlation_id, headers, scheduled_at, status, created_at, updated_at, "
                "version, retain_from) VALUES ('moved', 'o', '', '', 'b', '', '', "
                "fromUnixTimestamp64Micro({due:Int64}, 'UTC'), 'pending', now64(6), "
                "now64(6), {v:UInt64}, fromUnixTimestamp64Micro({due:Int64}, 'UTC'))",
                {"due": due, "v": version},
            )
        _, _, statements = CORE_MIGRATIONS[1]
        for statement in statements[:done]:  # the node died here
            await client.command(statement.format(db=client.database, ttl_days=30))
        assert await run_migrations(client, ttl_days=30) != []
        assert await run_migrations(client, ttl_days=30) == []
        assert ids((await store.due_before(UNTIL, 10)).events) == []
        page = await store.due_before(NOW + timedelta(days=10), 10)
        assert [(e.schedule_id, e.scheduled_at) for e in page.events] == [
            ("moved", NOW + timedelta(days=9))
        ]
    finally:
        await client.command(f"DROP DATABASE IF EXISTS {client.database} SYNC")


# --- paging: ties on due time and priority across page boundaries ---


async def test_equal_due_and_priority_across_pages_by_id(
    lt_store: ClickHouseLongTermStore,
) -> None:
    names = ["a", "A", "a0", "a-", "a_", "b", "B9", "Z", "0", "09", "9", "aa", "a.b"]
    events = [event(sid, days=2) for sid in names]
    events += [event(f"hi-{sid}", days=2, priority=5) for sid in names[:4]]
    await lt_store.insert(events)
    expected = sorted(events, key=lambda e: (e.scheduled_at, -e.priority, e.schedule_id))
    for size in (1, 2, 3, 5):
        got: list[ScheduledEvent] = []
        after = None
        while True:
            page = await lt_store.due_after(UNTIL, size, after)
            got.extend(page.events)
            if len(page.events) < size:
                break
            last = page.events[-1]
            after = (last.scheduled_at, last.priority, last.schedule_id)
        assert ids(got) == ids(expected), size


async def test_an_until_in_another_time_zone_is_the_same_instant(
    lt_store: ClickHouseLongTermStore,
) -> None:
    await lt_store.insert([event("tz1", days=2), event("tz2", days=2 + 1 / 86400)])
    edge = (NOW + timedelta(days=2)).astimezone(timezone(timedelta(hours=-7)))
    assert ids((await lt_store.due_before(edge, 10)).events) == ["tz1"]
    after = (edge, 0, "tz1")
    assert ids((await lt_store.due_after(UNTIL, 10, after)).events) == ["tz2"]


# --- the pipelined sync: errors, a lost lease, cancellation, an event moved earlier ---


class _Lease:
    def __init__(self, renewals: int = 1000) -> None:
        self.renewals = renewals
        self.held = False

    async def acquire(self) -> int | None:
        self.held = True
        return 1

    async def renew(self) -> int | None:
        self.renewals -= 1
        return 1 if self.renewals >= 0 else None

    async def release(self) -> bool:
        self.held = False
        return True


def _sync(store: RedisNearTermStore, far: Any, lease: Any, batch: int = 2) -> SyncService[DuePage]:
    clock = ManualClock(NOW + timedelta(days=2))
    return SyncService(
        store, far, lease, clock, transfer_horizon_seconds=3600, retention_days=90, batch_size=batch
    )


def _others() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


async def test_a_failed_read_ahead_is_raised_and_leaves_no_task(
    lt_store: ClickHouseLongTermStore, store: RedisNearTermStore
) -> None:
    await lt_store.insert([event(f"f{i}", days=2 + i / 86400) for i in range(6)])
    before = _others()
    lease = _Lease()
    sync = _sync(store, PagedFar(lt_store, fail_page=2), lease)
    with pytest.raises(RuntimeError, match="read of page 2 failed"):
        await sync.sync_once()
    assert _others() <= before and not lease.held
    assert sync.last_error is not None
    # The first page moved; the rest move on the next run, nothing twice.
    assert await _sync(store, lt_store, _Lease()).sync_once() == 4


async def test_a_failed_redis_write_cancels_the_read_ahead(
    lt_store: ClickHouseLongTermStore, store: RedisNearTermStore
) -> None:
    await lt_store.insert([event(f"w{i}", days=2 + i / 86400) for i in range(6)])

    class Broken(ForwardingNear):
        async def schedule(self, events: Sequence[ScheduledEvent]) -> list[bool]:
            await far.slow_started.wait()  # the read ahead is in flight
            raise ConnectionError("redis down")

    far = PagedFar(lt_store, slow_page=2)
    before = _others()
    lease = _Lease()
    sync = SyncService(
        Broken(store),
        far,
        lease,
        ManualClock(NOW + timedelta(days=2)),
        transfer_horizon_seconds=3600,
        retention_days=90,
        batch_size=2,
    )
    with pytest.raises(ConnectionError):
        await sync.sync_once()
    assert far.slow_cancelled and _others() <= before and not lease.held
    assert (await lt_store.counts())["queued"] == 0


async def test_a_lost_lease_stops_and_cancels_the_read_ahead(
    lt_store: ClickHouseLongTermStore, store: RedisNearTermStore
) -> None:
    await lt_store.insert([event(f"l{i}", days=2 + i / 86400) for i in range(6)])
    before = _others()
    far = PagedFar(lt_store, slow_page=2)
    lease = _Lease(renewals=0)
    assert await _sync(store, far, lease).sync_once() == 2
    assert far.slow_cancelled and _others() <= before and not lease.held


async def test_cancelling_the_sync_leaves_no_task(
    lt_store: ClickHouseLongTermStore, store: RedisNearTermStore
) -> None:
    await lt_store.insert([event(f"x{i}", days=2 + i / 86400) for i in range(6)])
    before = _others()
    far = PagedFar(lt_store, slow_page=1)
    lease = _Lease()
    run = asyncio.ensure_future(_sync(store, far, lease).sync_once())
    await far.slow_started.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert far.slow_cancelled and _others() <= before and not lease.held


async def test_an_event_moved_earlier_behind_the_pages_moves_on_the_next_run(
    lt_store: ClickHouseLongTermStore, store: RedisNearTermStore
) -> None:
    events = [event(f"e{i}", days=2 + i / 86400) for i in range(6)]
    await lt_store.insert([*events, event("late", days=40)])

    async def move_late() -> None:  # behind the first page, which is already read
        assert await lt_store.reschedule("late", NOW + timedelta(days=2, microseconds=1))

    sync = _sync(store, PagedFar(lt_store, after_page={1: move_late}), _Lease())
    assert await sync.sync_once() == 6
    assert await _sync(store, lt_store, _Lease()).sync_once() == 1
    claim = await store.claim(to_epoch_us(NOW + timedelta(days=3)), 100, 30)
    assert sorted(ids(claim.events)) == sorted([*ids(events), "late"])
    late = next(e for e in claim.events if e.schedule_id == "late")
    assert late.scheduled_at == NOW + timedelta(days=2, microseconds=1)


# --- a reschedule into Redis racing the sync ---


async def test_a_reschedule_into_redis_racing_the_sync_keeps_the_event(
    lt_store: ClickHouseLongTermStore, store: RedisNearTermStore, redis_client: Redis
) -> None:
    from delayline.services.scheduler import SchedulerService

    clock = ManualClock(NOW)
    lease = RedisLease(redis_client, f"{store.due_key[:-4]}:sync", ttl=30)
    service = SchedulerService(store, clock, immediate_horizon_seconds=600, far=lt_store)
    await lt_store.insert([event("r", days=1 / 48)])  # due in 30 minutes
    soon = NOW + timedelta(minutes=5)

    async def reschedule() -> None:  # after the sync's read, before its Redis write
        assert await service.reschedule_event("r", soon)

    far = PagedFar(lt_store, after_page={1: reschedule})
    sync = SyncService(store, far, lease, clock, transfer_horizon_seconds=3600, retention_days=90)
    await sync.sync_once()
    got = await store.get("r")
    assert got is not None and got.scheduled_at == soon

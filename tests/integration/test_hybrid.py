"""Both tiers together: routing, the sync, cancel/reschedule across tiers, cleanup (real chDB)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from delayline.adapters.clickhouse.long_term_store import ClickHouseLongTermStore, DuePage
from delayline.adapters.embedded import EmbeddedTansu
from delayline.adapters.kafka_producer import KafkaEventPublisher, producer_config
from delayline.adapters.redis_lease import RedisLease
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.clock import ManualClock
from delayline.domain.events import EventStatus, from_epoch_us, to_epoch_us
from delayline.domain.outcomes import ExecutionResult
from delayline.ports import Finished
from delayline.services.dispatcher import Dispatcher, DispatcherConfig
from delayline.services.scheduler import SchedulerService
from delayline.services.sync import SyncService
from tests.support import ForwardingFar, TopicReader

HORIZON = 86400
TRANSFER = 3600


@dataclass
class Hybrid:
    service: SchedulerService
    sync: SyncService[DuePage]
    near: RedisNearTermStore
    far: ClickHouseLongTermStore
    clock: ManualClock


def _hybrid(
    near: RedisNearTermStore,
    far: ClickHouseLongTermStore,
    redis_client: Redis,
    clock: ManualClock,
    lock_name: str = "sync",
) -> Hybrid:
    lease = RedisLease(redis_client, f"{near.due_key[:-4]}:{lock_name}", ttl=30)
    sync = SyncService(
        near, far, lease, clock, transfer_horizon_seconds=TRANSFER, retention_days=90
    )
    service = SchedulerService(near, clock, immediate_horizon_seconds=HORIZON, far=far, sync=sync)
    return Hybrid(service, sync, near, far, clock)


@pytest.fixture
def hybrid(
    store: RedisNearTermStore, lt_store: ClickHouseLongTermStore, redis_client: Redis
) -> Hybrid:
    return _hybrid(store, lt_store, redis_client, ManualClock())


async def _event_at(h: Hybrid, when: datetime, sid: str | None = None) -> str:
    return await h.service.schedule_event(topic="t", body="b", scheduled_at=when, schedule_id=sid)


async def test_routing_at_the_horizon_boundary(hybrid: Hybrid) -> None:
    now = hybrid.clock.now()
    edge = now + timedelta(seconds=HORIZON)
    under = await _event_at(hybrid, edge - timedelta(microseconds=1))
    at = await _event_at(hybrid, edge)
    over = await _event_at(hybrid, edge + timedelta(microseconds=1))
    assert await hybrid.near.get(under) is not None
    assert await hybrid.near.get(at) is not None
    assert await hybrid.near.get(over) is None
    stored = await hybrid.far.get(over)
    assert stored is not None
    assert stored.status is EventStatus.PENDING
    got = await hybrid.service.get_event(over)
    assert got is not None
    assert got.schedule_id == over
    stats = await hybrid.service.get_stats()
    assert stats["redis_pending"] == 2
    assert stats["clickhouse_pending"] == 1
    assert stats["pending"] == 3
    assert stats["clickhouse_next_due_at"] == (edge + timedelta(microseconds=1)).isoformat()


async def test_sync_moves_due_soon_events_once(hybrid: Hybrid) -> None:
    now = hybrid.clock.now()
    ids = [await _event_at(hybrid, now + timedelta(days=2, minutes=i)) for i in range(5)]
    assert await hybrid.service.sync_clickhouse_to_redis() == 0
    hybrid.clock.advance(86400 * 2 - TRANSFER + 150)  # the first three are now within 1 h
    assert await hybrid.service.sync_clickhouse_to_redis() == 3
    assert await hybrid.service.sync_clickhouse_to_redis() == 0
    assert (await hybrid.near.counts())["pending"] == 3
    for sid in ids[:3]:
        moved = await hybrid.far.get(sid)
        assert moved is not None
        assert moved.status is EventStatus.QUEUED
    assert (await hybrid.service.get_stats())["sync"]["moved_total"] == 3


async def test_two_concurrent_syncs_move_each_event_once(
    store: RedisNearTermStore, lt_store: ClickHouseLongTermStore, redis_client: Redis
) -> None:
    clock = ManualClock()
    a = _hybrid(store, lt_store, redis_client, clock, "lock-a")
    # b uses another lock on purpose: even without mutual exclusion nothing is doubled
    b = _hybrid(store, lt_store, redis_client, clock, "lock-b")
    events = [
        a.service.build_event(topic="t", scheduled_at=clock.now() + timedelta(days=3, seconds=i))
        for i in range(300)
    ]
    await a.service.schedule_events(events)
    clock.advance(86400 * 3)
    await asyncio.gather(a.sync.sync_once(), b.sync.sync_once())
    claim = await store.claim(to_epoch_us(clock.now() + timedelta(hours=1)), 1000, 30)
    ids = [e.schedule_id for e in claim.events]
    assert sorted(ids) == sorted(e.schedule_id for e in events)
    assert len(ids) == len(set(ids))


class _CrashAfterRedis(ForwardingFar[DuePage]):
    """A long-term store whose first mark_queued dies, as a node killed mid-sync would."""

    def __init__(self, inner: ClickHouseLongTermStore) -> None:
        super().__init__(inner)
        self.crashed = False

    async def mark_queued(self, page: DuePage) -> list[str]:
        if not self.crashed:
            self.crashed = True
            raise ConnectionError("node died between the Redis write and the status write")
        return await self.inner.mark_queued(page)


async def test_sync_killed_between_redis_and_status_write(
    store: RedisNearTermStore, lt_store: ClickHouseLongTermStore, redis_client: Redis
) -> None:
    clock = ManualClock()
    h = _hybrid(store, lt_store, redis_client, clock)
    ids = [await _event_at(h, clock.now() + timedelta(days=5, seconds=i)) for i in range(20)]
    clock.advance(86400 * 5)
    crashing = SyncService(
        store,
        _CrashAfterRedis(lt_store),
        RedisLease(redis_client, f"{store.due_key[:-4]}:sync", ttl=30),
        clock,
        transfer_horizon_seconds=TRANSFER,
        retention_days=90,
    )
    with pytest.raises(ConnectionError):
        await crashing.sync_once()
    assert (await store.counts())["pending"] == 20  # in Redis, still pending in ClickHouse
    assert await h.sync.sync_once() == 20  # the lease was released by the crashed run
    assert (await store.counts())["pending"] == 20  # no duplicate
    stored = [await lt_store.get(i) for i in ids]
    assert {e.status for e in stored if e is not None} == {EventStatus.QUEUED}
    assert None not in stored


class _CancelDuringSync(ForwardingFar[DuePage]):
    """Cancels an event through the service right after the sync has read it."""

    def __init__(self, inner: ClickHouseLongTermStore) -> None:
        super().__init__(inner)
        self.service: SchedulerService | None = None
        self.victim = ""

    async def due_after(
        self, until: datetime, limit: int, after: tuple[datetime, int, str] | None
    ) -> DuePage:
        page = await self.inner.due_after(until, limit, after)
        assert self.service is not None
        assert await self.service.cancel_event(self.victim)
        return page


async def test_cancel_during_sync_never_fires(
    store: RedisNearTermStore, lt_store: ClickHouseLongTermStore, redis_client: Redis
) -> None:
    clock = ManualClock()
    h = _hybrid(store, lt_store, redis_client, clock)
    victim = await _event_at(h, clock.now() + timedelta(days=2))
    other = await _event_at(h, clock.now() + timedelta(days=2, seconds=1))
    racing = _CancelDuringSync(lt_store)
    racing.service, racing.victim = h.service, victim
    sync = SyncService(
        store,
        racing,
        RedisLease(redis_client, f"{store.due_key[:-4]}:sync", ttl=30),
        clock,
        transfer_horizon_seconds=TRANSFER,
        retention_days=90,
    )
    clock.advance(86400 * 2)
    assert await sync.sync_once() == 1
    claim = await store.claim(to_epoch_us(clock.now() + timedelta(hours=1)), 100, 30)
    assert [e.schedule_id for e in claim.events] == [other]
    cancelled = await lt_store.get(victim)
    assert cancelled is not None
    assert cancelled.status is EventStatus.CANCELLED


async def test_cancel_and_reschedule_across_tiers(hybrid: Hybrid) -> None:
    now = hybrid.clock.now()
    far_id = await _event_at(hybrid, now + timedelta(days=10))
    near_id = await _event_at(hybrid, now + timedelta(hours=2))
    # far → near
    assert await hybrid.service.reschedule_event(far_id, now + timedelta(minutes=5))
    moved = await hybrid.near.get(far_id)
    assert moved is not None
    assert moved.scheduled_at == now + timedelta(minutes=5)
    # near → far
    assert await hybrid.service.reschedule_event(near_id, now + timedelta(days=20))
    assert await hybrid.near.get(near_id) is None or (
        (await hybrid.near.get(near_id)).status is EventStatus.CANCELLED  # type: ignore[union-attr]
    )
    far = await hybrid.far.get(near_id)
    assert far is not None
    assert far.status is EventStatus.PENDING
    assert far.scheduled_at == now + timedelta(days=20)
    # cancel in either tier
    assert await hybrid.service.cancel_event(near_id)
    assert await hybrid.service.cancel_event(far_id)
    assert not await hybrid.service.cancel_event("unknown-id")


async def test_cleanup_leaves_live_events_alone(hybrid: Hybrid) -> None:
    now = hybrid.clock.now()
    live = [await _event_at(hybrid, now + timedelta(days=3, seconds=i)) for i in range(3)]
    done = [await _event_at(hybrid, now + timedelta(days=4, seconds=i)) for i in range(4)]
    for sid in done:
        assert await hybrid.service.cancel_event(sid)
    hybrid.clock.advance(86400 * 91)  # past the 90-day retention of the cancelled ones
    removed = await hybrid.service.cleanup_old_schedules()
    assert removed == 4
    for sid in live:
        kept = await hybrid.far.get(sid)
        assert kept is not None
        assert kept.status is EventStatus.PENDING
    assert [await hybrid.far.get(sid) for sid in done] == [None] * len(done)


@given(offsets=st.lists(st.integers(min_value=0, max_value=60 * 86400), min_size=1, max_size=25))
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
async def test_events_over_60_days_each_fire_once_at_their_time(
    offsets: list[int],
    store: RedisNearTermStore,
    lt_store: ClickHouseLongTermStore,
    redis_client: Redis,
) -> None:
    clock = ManualClock()
    h = _hybrid(store, lt_store, redis_client, clock, f"p{len(offsets)}")
    start = clock.now()
    events = [
        h.service.build_event(topic="t", scheduled_at=start + timedelta(seconds=o)) for o in offsets
    ]
    await h.service.schedule_events(events)
    due = {e.schedule_id: e.scheduled_at for e in events}
    fired: dict[str, datetime] = {}
    step = 300.0  # CLICKHOUSE_SYNC_INTERVAL
    while clock.now() <= start + timedelta(days=60, seconds=step):
        await h.sync.sync_once()
        claim = await store.claim(to_epoch_us(clock.now()), 1000, 30)
        for event in claim.events:
            assert event.schedule_id not in fired
            fired[event.schedule_id] = clock.now()
        await store.ack(
            claim.token, [Finished(e.schedule_id, EventStatus.COMPLETED) for e in claim.events]
        )
        # Jump to the next moment anything can happen: a Redis due time, or the sync tick at
        # which the next ClickHouse event enters the transfer horizon.
        candidates = [clock.now() + timedelta(seconds=step)]
        far_next = await lt_store.next_due()
        if far_next is not None:
            candidates[0] = max(candidates[0], far_next - timedelta(seconds=TRANSFER))
        near_next = await store.next_due_us()
        if near_next is not None:
            candidates.append(from_epoch_us(near_next))
        if far_next is None and near_next is None:
            break
        clock.set(max(clock.now(), min(candidates)))
    assert set(fired) == set(due)
    for sid, at in fired.items():
        # fired at (never before) its due time, to the microsecond in simulated time
        assert at == due[sid]
    await store.delete_all()


async def test_an_event_30_days_out_fires_through_the_sync(
    store: RedisNearTermStore,
    lt_store: ClickHouseLongTermStore,
    redis_client: Redis,
    broker: EmbeddedTansu,
    unique: str,
) -> None:
    clock = ManualClock()
    h = _hybrid(store, lt_store, redis_client, clock)
    topic = f"month-{unique}"
    reader = TopicReader(broker.bootstrap_servers, topic)
    due = clock.now() + timedelta(days=30)
    sid = await h.service.schedule_event(topic=topic, body="renewal", scheduled_at=due)
    assert await h.near.get(sid) is None
    clock.set(due - timedelta(minutes=30))
    assert await h.service.sync_clickhouse_to_redis() == 1
    publisher = KafkaEventPublisher(
        producer_config(broker.bootstrap_servers, linger_ms=0, lease_seconds=30, extra={})
    )
    await publisher.start()
    results: list[ExecutionResult] = []

    class Sink:
        def record(self, result: ExecutionResult) -> None:
            results.append(result)

    dispatcher = Dispatcher(
        store, publisher, Sink(), clock, DispatcherConfig(max_sleep_seconds=0.05)
    )
    task = asyncio.create_task(dispatcher.run())
    await asyncio.sleep(0.3)
    assert reader.read_for(0.2) == []  # not yet: the manual clock is 30 min early
    clock.set(due)
    dispatcher.wake()
    msgs = await asyncio.to_thread(reader.read, 1, 10)
    dispatcher.stop()
    await task
    await publisher.stop()
    reader.close()
    assert [m.header("x-schedule-id") for m in msgs] == [sid]
    assert 0 <= results[0].delay_seconds < 1


async def test_a_second_sync_does_not_take_back_what_the_first_moved(hybrid: Hybrid) -> None:
    # The interleaving that two unlocked syncs can produce: both read, then each writes.
    now = hybrid.clock.now()
    ids = [await _event_at(hybrid, now + timedelta(days=2, seconds=i)) for i in range(20)]
    hybrid.clock.advance(86400 * 2)
    until = hybrid.clock.now() + timedelta(seconds=TRANSFER)
    read_a = await hybrid.far.due_before(until, 1000)
    read_b = await hybrid.far.due_before(until, 1000)
    await hybrid.near.schedule(read_a.events)
    assert await hybrid.far.mark_queued(read_a) == []
    await hybrid.near.schedule(read_b.events)
    assert await hybrid.far.mark_queued(read_b) == []  # nothing to take back out of Redis
    assert (await hybrid.near.counts())["pending"] == 20
    stored = [await hybrid.far.get(i) for i in ids]
    assert {e.status for e in stored if e is not None} == {EventStatus.QUEUED}

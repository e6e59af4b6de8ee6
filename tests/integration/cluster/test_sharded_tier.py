"""The sharded near-term tier on a real 3-master Valkey Cluster and on several plain servers:
schedule → fire → cancel → reschedule → upsert, the shard-count record, resharding."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster

from delayline.adapters.embedded import EmbeddedTansu, EmbeddedValkey, free_port
from delayline.adapters.kafka_producer import KafkaEventPublisher, producer_config
from delayline.adapters.redis_connect import RedisServers, redis_servers
from delayline.adapters.redis_layout import shard_of, wake_channel
from delayline.adapters.redis_reshard import ReshardRefused, move_to_shards, wake_listeners
from delayline.adapters.redis_sharded import ShardCountMismatch, ShardedNearTermStore
from delayline.clock import SystemClock
from delayline.domain.events import EventStatus, ScheduledEvent, utc_now
from delayline.domain.outcomes import Delivery, ExecutionResult
from delayline.ports import Upserted
from delayline.services.dispatcher import Dispatcher, DispatcherConfig
from delayline.services.scheduler import SchedulerService
from tests.support import TopicReader, eventually, eventually_status
from tests.valkey_cluster import ValkeyCluster


@dataclass
class Results:
    items: list[ExecutionResult] = field(default_factory=list)

    def record(self, result: ExecutionResult) -> None:
        self.items.append(result)


@dataclass
class Sharded:
    store: ShardedNearTermStore
    service: SchedulerService
    reader: TopicReader
    topic: str


def _servers(url: str) -> RedisServers:
    return redis_servers(url, max_connections=20, pool_timeout=5)


@pytest.fixture
async def cluster_servers(valkey_cluster: ValkeyCluster) -> AsyncIterator[RedisServers]:
    servers = _servers(valkey_cluster.url)
    yield servers
    await servers.aclose()


@pytest.fixture
async def plain_servers(
    valkey: EmbeddedValkey, second_valkey: EmbeddedValkey
) -> AsyncIterator[RedisServers]:
    servers = _servers(f"{valkey.url},{second_valkey.url}")
    yield servers
    await servers.aclose()


async def _running(
    servers: RedisServers, shards: int, broker: EmbeddedTansu, unique: str
) -> AsyncIterator[Sharded]:
    store = ShardedNearTermStore(servers, prefix=f"s-{unique}", shards=shards)
    await store.check_shard_count()
    topic = f"sharded-{unique}"
    reader = TopicReader(broker.bootstrap_servers, topic)
    publisher = KafkaEventPublisher(
        producer_config(broker.bootstrap_servers, linger_ms=0, lease_seconds=30, extra={})
    )
    await publisher.start()
    clock = SystemClock()
    dispatcher = Dispatcher(
        store, publisher, Results(), clock, DispatcherConfig(max_sleep_seconds=1, node_id="t")
    )
    task = asyncio.create_task(dispatcher.run())
    yield Sharded(store, SchedulerService(store, clock), reader, topic)
    dispatcher.stop()
    await task
    await publisher.stop()
    reader.close()
    await store.delete_all()


@pytest.fixture
async def on_cluster(
    cluster_servers: RedisServers, broker: EmbeddedTansu, unique: str
) -> AsyncIterator[Sharded]:
    async for running in _running(cluster_servers, 8, broker, unique):
        yield running


@pytest.fixture
async def on_two_servers(
    plain_servers: RedisServers, broker: EmbeddedTansu, unique: str
) -> AsyncIterator[Sharded]:
    async for running in _running(plain_servers, 4, broker, unique):
        yield running


async def _full_path(running: Sharded) -> None:
    """Schedule (bulk, over every shard) → fire; cancel; reschedule; upsert."""
    service, topic = running.service, running.topic
    soon = utc_now() + timedelta(seconds=0.5)
    ids = [f"ev-{n}" for n in range(40)]
    events = [
        service.build_event(schedule_id=sid, topic=topic, body=sid, scheduled_at=soon)
        for sid in ids
    ]
    assert all(await service.schedule_events(events))
    assert {shard_of(sid, running.store.shard_count) for sid in ids} == set(
        range(running.store.shard_count)
    )
    later = utc_now() + timedelta(hours=1)
    cancelled = await service.schedule_event(topic=topic, body="no", scheduled_at=later)
    moved = await service.schedule_event(topic=topic, body="moved", scheduled_at=later)
    per_shard = (await service.get_stats())["redis_shards"]
    assert [s["shard"] for s in per_shard] == list(range(running.store.shard_count))
    assert per_shard[shard_of(moved, running.store.shard_count)]["pending"] >= 1
    assert sum(s["pending"] + s["processing"] for s in per_shard) >= 2  # the far-off two
    assert await service.cancel_event(cancelled)
    assert await service.reschedule_event(moved, utc_now() + timedelta(seconds=0.3))
    replaced = service.build_event(
        schedule_id="ev-0-again", topic=topic, body="v1", scheduled_at=later
    )
    assert await service.upsert_events([replaced], ["1"]) == [Upserted.CREATED]
    newer = service.build_event(
        schedule_id="ev-0-again", topic=topic, body="v2", scheduled_at=utc_now()
    )
    assert await service.upsert_events([newer], ["2"]) == [Upserted.REPLACED]
    fired = await asyncio.to_thread(running.reader.read, 42, 30)
    assert sorted(m.header("x-schedule-id") for m in fired) == sorted([*ids, moved, "ev-0-again"])
    assert [m.value for m in fired if m.header("x-schedule-id") == "ev-0-again"] == [b"v2"]
    event = await eventually_status(lambda: service.get_event(ids[0]))
    assert getattr(event, "status", None) is EventStatus.COMPLETED
    gone = await service.get_event(cancelled)
    assert gone is not None and gone.status is EventStatus.CANCELLED
    counts = await running.store.counts()
    assert counts["pending"] == 0
    assert counts["completed"] == 42


async def test_full_path_on_a_three_master_cluster(
    on_cluster: Sharded, cluster_servers: RedisServers
) -> None:
    [client] = cluster_servers.clients
    assert isinstance(client, RedisCluster)
    nodes = [client.get_node_from_key(s.due_key) for s in on_cluster.store.shards]
    masters = {node.name for node in nodes if node is not None}
    assert len(masters) == 3  # the 8 shards spread over all three masters
    await _full_path(on_cluster)


async def test_full_path_on_two_plain_servers(
    on_two_servers: Sharded, plain_servers: RedisServers
) -> None:
    await _full_path(on_two_servers)
    for store in on_two_servers.store.shards:  # shard k lives on server k mod 2
        server = plain_servers.clients[store.shard % 2]
        other = plain_servers.clients[1 - store.shard % 2]
        assert await server.exists(store.counts_key)
        assert not await other.exists(store.counts_key)


async def test_a_different_shard_count_is_refused(
    cluster_servers: RedisServers, unique: str
) -> None:
    first = ShardedNearTermStore(cluster_servers, prefix=f"m-{unique}", shards=4)
    await first.check_shard_count()
    second = ShardedNearTermStore(cluster_servers, prefix=f"m-{unique}", shards=2)
    with pytest.raises(ShardCountMismatch, match="delayline reshard --to 2"):
        await second.check_shard_count()
    await first.check_shard_count()  # the recorded count still starts
    await first.delete_all()


async def test_reshard_moves_everything_and_loses_nothing(
    cluster_servers: RedisServers, unique: str
) -> None:
    prefix = f"r-{unique}"
    one = ShardedNearTermStore(cluster_servers, prefix=prefix, shards=1)
    await one.check_shard_count()
    service = SchedulerService(one, SystemClock())
    due = utc_now() + timedelta(hours=1)
    ids = [f"r-{n}" for n in range(1200)]
    events = [
        service.build_event(schedule_id=sid, topic="t", body=sid, scheduled_at=due, priority=n % 3)
        for n, sid in enumerate(ids)
    ]
    assert all(await service.schedule_events(events))
    assert await one.cancel("r-0")  # a remembered outcome moves too
    progress: list[int] = []
    moved = await move_to_shards(
        cluster_servers, prefix, 6, progress=lambda count, shard: progress.append(count)
    )
    assert moved == 1199  # every pending one: no tag is shared between 1 and 6 shards
    assert progress[-1] == moved
    six = ShardedNearTermStore(cluster_servers, prefix=prefix, shards=6)
    await six.check_shard_count()  # the new count is recorded
    assert (await six.counts())["pending"] == 1199
    assert (await one.shards[0].counts())["pending"] == 0
    for sid in ids[1:]:
        event = await six.get(sid)
        assert event is not None and event.body == sid.encode() and event.scheduled_at == due
    cancelled = await six.get("r-0")
    assert cancelled is not None and cancelled.status is EventStatus.CANCELLED
    assert await move_to_shards(cluster_servers, prefix, 4) > 0  # 6 → 4: some stay
    four = ShardedNearTermStore(cluster_servers, prefix=prefix, shards=4)
    assert (await four.counts())["pending"] == 1199
    assert [await four.get(sid) is not None for sid in ids] == [True] * 1200
    await four.delete_all()


async def test_reshard_is_refused_while_a_node_runs(
    on_cluster: Sharded, cluster_servers: RedisServers
) -> None:
    [client] = cluster_servers.clients
    channel = wake_channel(on_cluster.store.prefix)
    for _ in range(200):  # the dispatcher subscribes as it starts
        if await wake_listeners(client, channel):
            break
        await asyncio.sleep(0.05)
    with pytest.raises(ReshardRefused, match="a node is running"):
        await move_to_shards(cluster_servers, on_cluster.store.prefix, 2)


async def test_a_cluster_url_may_name_several_nodes_to_start_from(
    valkey_cluster: ValkeyCluster, unique: str
) -> None:
    dead = f"redis+cluster://127.0.0.1:{free_port()}"  # nothing listens there
    live = f"redis+cluster://127.0.0.1:{valkey_cluster.masters[1].port}"
    servers = _servers(f"{dead},{live}")
    store = ShardedNearTermStore(servers, prefix=f"n-{unique}", shards=3)
    service = SchedulerService(store, SystemClock())
    try:
        schedule_id = await service.schedule_event(
            topic="t", body="x", scheduled_at=utc_now() + timedelta(hours=1)
        )
        event = await store.get(schedule_id)
        assert event is not None and event.status is EventStatus.PENDING
        [client] = servers.clients
        assert isinstance(client, RedisCluster)
        assert len(client.get_primaries()) == 3  # found every master through the live node
    finally:
        await store.delete_all()
        await servers.aclose()


def test_a_url_list_mixing_cluster_nodes_and_servers_is_refused() -> None:
    with pytest.raises(ValueError, match="mixes redis\\+cluster:// nodes"):
        redis_servers(
            "redis+cluster://127.0.0.1:7000,redis://127.0.0.1:6379",
            max_connections=1,
            pool_timeout=1,
        )


@dataclass
class StopsServerOnPublish:
    """The real publisher; its first publish stops ``server`` first (a server lost between a
    batch's claim and its acknowledgement)."""

    inner: KafkaEventPublisher
    server: EmbeddedValkey

    async def publish(self, events: Sequence[ScheduledEvent]) -> list[BaseException | Delivery]:
        if self.server.pid is not None:
            await asyncio.to_thread(self.server.stop)
        return await self.inner.publish(events)


async def test_a_server_lost_before_the_ack_costs_only_its_own_shards(
    valkey: EmbeddedValkey,
    broker: EmbeddedTansu,
    tmp_path: Path,
    unique: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    doomed = EmbeddedValkey(tmp_path / "doomed")
    doomed.start()
    servers = _servers(f"{valkey.url},{doomed.url}")  # shard 0 on valkey, shard 1 on doomed
    store = ShardedNearTermStore(servers, prefix=f"l-{unique}", shards=2)
    topic = f"lost-{unique}"
    service = SchedulerService(store, SystemClock())
    ids = [f"ev-{n}" for n in range(20)]
    on_doomed = [sid for sid in ids if shard_of(sid, 2) == 1]
    assert 0 < len(on_doomed) < len(ids)
    soon = utc_now() + timedelta(seconds=0.5)
    events = [
        service.build_event(schedule_id=sid, topic=topic, body=sid, scheduled_at=soon)
        for sid in ids
    ]
    assert all(await service.schedule_events(events))
    publisher = KafkaEventPublisher(
        producer_config(broker.bootstrap_servers, linger_ms=0, lease_seconds=30, extra={})
    )
    await publisher.start()
    config = DispatcherConfig(max_sleep_seconds=0.2, node_id="t", lease_seconds=2.0)
    dispatcher = Dispatcher(
        store, StopsServerOnPublish(publisher, doomed), Results(), SystemClock(), config
    )
    task = asyncio.create_task(dispatcher.run())
    reader = TopicReader(broker.bootstrap_servers, topic)
    try:
        fired = await asyncio.to_thread(reader.read, len(ids), 20)
        assert sorted(m.header("x-schedule-id") for m in fired) == sorted(ids)
        await eventually(lambda: _lost_lease_logs(caplog), timeout=config.lease_seconds + 5)
        assert await _lost_lease_logs(caplog) == [f"{len(on_doomed)} of {len(ids)}"]
        counts = await store.shards[0].counts()
        assert counts["completed"] == len(ids) - len(on_doomed)  # acknowledged, and only once
        assert not [r for r in caplog.records if "failed; they fire again" in r.getMessage()]
    finally:
        dispatcher.stop()
        await task
        await publisher.stop()
        reader.close()
        await store.shards[0].delete_all()
        await servers.aclose()
        doomed.stop()


async def _lost_lease_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    """ "K of N" of each batch logged as partly unacknowledged."""
    return [
        r.getMessage().split(" events")[0]
        for r in caplog.records
        if "lost their lease before their acknowledgement" in r.getMessage()
    ]

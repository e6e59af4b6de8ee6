"""One master of the 3-master cluster SIGKILLed and restarted under a running service: its
shards answer "unavailable" (the API's 503) while it is down, the other shards keep firing
(the cluster runs with ``cluster-require-full-coverage no``, as docs/SCALING.md recommends),
and every event whose scheduling was acknowledged fires once it is back."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import timedelta

from redis.asyncio.cluster import RedisCluster

from delayline.adapters.embedded import EmbeddedTansu
from delayline.adapters.guarded import GuardedNearTermStore
from delayline.adapters.kafka_producer import KafkaEventPublisher, producer_config
from delayline.adapters.redis_connect import redis_servers
from delayline.adapters.redis_sharded import ShardedNearTermStore
from delayline.clock import SystemClock
from delayline.domain.events import utc_now
from delayline.errors import DependencyUnavailable
from delayline.resilience import CircuitBreaker
from delayline.services.dispatcher import Dispatcher, DispatcherConfig
from delayline.services.scheduler import SchedulerService
from tests.integration.cluster.test_sharded_tier import Results
from tests.support import TopicReader
from tests.valkey_cluster import ValkeyCluster


async def test_a_master_killed_and_restarted_loses_nothing_acknowledged(
    valkey_cluster: ValkeyCluster, broker: EmbeddedTansu, unique: str
) -> None:
    # The master the URL names: after its first connection a client knows every node.
    victim = valkey_cluster.masters[0]
    replica = valkey_cluster.replicas[0]
    replica.command("CONFIG", "SET", "cluster-replica-no-failover", "yes")  # down until back
    # Every acknowledged write is in the AOF before its reply: a SIGKILL loses none of them
    # (with everysec, a write may wait behind a slow fsync while its reply goes out).
    victim.command("CONFIG", "SET", "appendfsync", "always")
    servers = redis_servers(
        valkey_cluster.url, max_connections=20, pool_timeout=5, command_timeout=2
    )
    store = ShardedNearTermStore(servers, prefix=f"k-{unique}", shards=6)
    [client] = servers.clients
    assert isinstance(client, RedisCluster)
    await client.initialize()  # the slot map
    on_victim = {
        s.shard
        for s in store.shards
        if (node := client.get_node_from_key(s.due_key)) is not None and node.port == victim.port
    }
    assert on_victim and len(on_victim) < 6
    near = GuardedNearTermStore(
        store, CircuitBreaker("redis", reset_timeout=0.2, max_reset_timeout=1.0)
    )
    topic = f"restart-{unique}"
    reader = TopicReader(broker.bootstrap_servers, topic)
    publisher = KafkaEventPublisher(
        producer_config(broker.bootstrap_servers, linger_ms=0, lease_seconds=30, extra={})
    )
    await publisher.start()
    clock = SystemClock()
    service = SchedulerService(near, clock)
    dispatcher = Dispatcher(
        store, publisher, Results(), clock, DispatcherConfig(max_sleep_seconds=0.5, node_id="t")
    )
    task = asyncio.create_task(dispatcher.run())
    acknowledged: list[str] = []
    attempted: list[str] = []
    refused = 0

    async def schedule(count: int) -> None:
        nonlocal refused
        for _ in range(count):
            attempted.append(uuid.uuid4().hex)
            try:
                await service.schedule_event(
                    schedule_id=attempted[-1],
                    topic=topic,
                    body="x",
                    scheduled_at=utc_now() + timedelta(seconds=0.3),
                )
                acknowledged.append(attempted[-1])
            except DependencyUnavailable:  # a 503, or a 504 when the outcome is unknown
                refused += 1

    killed = restarted = False
    try:
        await schedule(20)
        victim.kill()
        killed = True
        await schedule(30)  # a sixth-ish of these land on the dead master's shards
        assert refused > 0
        fired_while_down = await asyncio.to_thread(reader.read, len(acknowledged) - 20, 20)
        assert len(fired_while_down) >= len(acknowledged) - 20  # the live shards kept firing
        await asyncio.to_thread(victim.start)
        restarted = True
        await asyncio.to_thread(valkey_cluster.wait_ok)
        await schedule(10)
        # At least once: a batch whose ack the dead master missed fires again, so read until
        # every acknowledged id came, not a count of messages.
        fired = await asyncio.to_thread(reader.read_ids, acknowledged, 60)
        fired_ids = {m.header("x-schedule-id") for m in fired}
        assert fired_ids >= set(acknowledged)
        assert fired_ids <= set(attempted)  # a refusal whose write landed may fire too
    finally:
        dispatcher.stop()
        await task
        await publisher.stop()
        reader.close()
        if (
            killed and not restarted
        ):  # the session's cluster stays whole for the tests after this one
            await asyncio.to_thread(victim.start)
            await asyncio.to_thread(valkey_cluster.wait_ok)
        replica.command("CONFIG", "SET", "cluster-replica-no-failover", "no")
        with contextlib.suppress(Exception):
            await store.delete_all()
        await servers.aclose()

"""Resharding the near-term tier offline: every event, remembered outcome and parked payload
moves to its shard under a new shard count.

Each pending event is stored in its new shard by the schedule script (insert-if-absent, keeping
its due time, priority and stored bytes: a sealed payload stays sealed) and only then removed
from its old shard, so an interrupted run loses nothing and can simply be run again. The new
count is recorded last.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from redis.asyncio.cluster import RedisCluster

from delayline.adapters.redis_connect import RedisClient, RedisServers
from delayline.adapters.redis_layout import PREFIX_LEN, wake_channel
from delayline.adapters.redis_sharded import ShardedNearTermStore
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.adapters.redis_upkeep import as_bytes

PAGE = 500


class ReshardRefused(RuntimeError):
    """Resharding now could lose or double-fire events."""


async def recorded_shards(servers: RedisServers, prefix: str) -> int:
    """The shard count the data was written with (1 when none is recorded yet)."""
    store = ShardedNearTermStore(servers, prefix)
    return int(await servers.control.get(store.shard_count_key) or 1)


async def move_to_shards(
    servers: RedisServers,
    prefix: str,
    to: int,
    *,
    result_ttl_seconds: int = 3600,
    progress: Callable[[int, int], None] = lambda moved, shard: None,
) -> int:
    """Move everything from the recorded shard count to ``to`` shards; returns how many
    pending events moved. ``progress(moved so far, old shard)`` is called per page.

    Refused while a node listens for wake-ups or an event is leased (being fired)."""
    old_count = await recorded_shards(servers, prefix)
    old = ShardedNearTermStore(servers, prefix, result_ttl_seconds, shards=old_count)
    new = ShardedNearTermStore(servers, prefix, result_ttl_seconds, shards=to)
    await _refuse_while_running(servers, old)
    moved = 0
    if old_count != to:
        new_tags = {s.keys.tag for s in new.shards}
        for store in old.shards:
            moved = await _move_pending(store, new, moved, progress)
            await _move_hash(store.client, store.parked_key, new, lambda s: s.parked_key)
            for bucket in await _result_buckets(store):
                await _move_results(store, bucket, new)
            if store.keys.tag not in new_tags:
                await _fold_counts(store, new.shards[0])
                await store.delete_all()
    await servers.control.set(new.shard_count_key, to)
    return moved


async def _refuse_while_running(servers: RedisServers, old: ShardedNearTermStore) -> None:
    channel = wake_channel(old.prefix)
    listeners = sum([await wake_listeners(client, channel) for client in servers.clients])
    if listeners:
        raise ReshardRefused(
            f"{listeners} process(es) listen for wake-ups on {channel}: a node is running; "
            "stop every node first"
        )
    now_us = time.time_ns() // 1000
    for store in old.shards:
        while await store.reap(now_us):  # leases left by a node that died: due again
            pass
        if await store.client.zcard(store.inflight_key):
            raise ReshardRefused(
                "events are leased (being fired) and their leases have not ended: stop every "
                "node and wait for SCHEDULES_LEASE_SECONDS"
            )


async def wake_listeners(client: RedisClient, channel: str) -> int:
    """Subscribers of ``channel`` on the server (on a Cluster: on every node)."""
    if isinstance(client, RedisCluster):
        replies = await client.pubsub_numsub(channel, target_nodes=RedisCluster.ALL_NODES)
    else:
        replies = await client.pubsub_numsub(channel)
    return sum(int(count) for _, count in replies)


async def _move_pending(
    store: RedisNearTermStore,
    new: ShardedNearTermStore,
    moved: int,
    progress: Callable[[int, int], None],
) -> int:
    """Walk the old shard's due set in due order; events of another shard now move."""
    client = store.client
    offset = 0
    while True:
        found: list[Any] = await client.zrange(
            store.due_key, offset, offset + PAGE - 1, withscores=True
        )
        page = [(as_bytes(member), float(score)) for member, score in found]
        if not page:
            return moved
        ids = [member[PREFIX_LEN:].decode() for member, _ in page]
        values = await client.hmget(store.payload_key, ids)
        for (member, score), schedule_id, value in zip(page, ids, values, strict=True):
            target = new.shard_for(schedule_id)
            if target.keys.tag == store.keys.tag:
                offset += 1
                continue
            if value is not None:
                priority = member[:8].decode()
                await target.schedule_stored(priority, schedule_id, int(score), as_bytes(value))
                # a move, not a new event: the total scheduled stays as it was
                await target.client.hincrby(target.counts_key, "scheduled", -1)
            await store.discard(schedule_id)
            moved += 1
        progress(moved, store.shard)


async def _move_hash(
    client: RedisClient,
    key: str,
    new: ShardedNearTermStore,
    target_key: Callable[[RedisNearTermStore], str],
    ttl_ms: int = 0,
) -> None:
    """Each field of a per-id hash to the same hash of the field's new shard."""
    entries = await client.hgetall(key)
    for field, value in entries.items():
        schedule_id = as_bytes(field).decode()
        target = new.shard_for(schedule_id)
        name = target_key(target)
        if name == key:
            continue
        await target.client.hset(name, schedule_id, value)
        if ttl_ms > 0:
            await target.client.pexpire(name, ttl_ms, nx=True)
        await client.hdel(key, schedule_id)


async def _result_buckets(store: RedisNearTermStore) -> list[str]:
    return [b for b in store.result_buckets() if await store.client.exists(b)]


async def _move_results(store: RedisNearTermStore, bucket: str, new: ShardedNearTermStore) -> None:
    """Remembered outcomes to their new shard's bucket of the same period and lifetime."""
    suffix = bucket.rsplit(":", 1)[1]
    ttl_ms = int(await store.client.pttl(bucket))
    await _move_hash(
        store.client,
        bucket,
        new,
        lambda s: f"{s.keys.tag}:results:{suffix}",
        ttl_ms=max(ttl_ms, 1),
    )


async def _fold_counts(store: RedisNearTermStore, into: RedisNearTermStore) -> None:
    """A shard that no longer exists adds its totals per status to the first shard's."""
    for status, total in (await store.client.hgetall(store.counts_key)).items():
        await into.client.hincrby(into.counts_key, as_bytes(status).decode(), int(total))

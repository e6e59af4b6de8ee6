"""Firing throughput with 1 and 2 firing worker processes × 1/4/16 shards, beside today's
single-slot store fired by one in-process dispatcher, in the same run.

Each worker run uses the shipped path of ``delayline serve --workers N``: :class:`FiringWorkers`
spawns N :class:`FiringProcess` children, each owning its share of the shards by lease (their
ownership balanced before the load), claiming ``batch`` events at a time and sending every
result back over its queue to this process, where it is counted. N events are scheduled due
at one instant a little ahead (so the load is in place first); the clock runs from that
instant until the last result reaches this process. Two workers with one shard is refused by
``serve`` and not run.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from pydantic import SecretStr

from bench.common import CollectingSink, Result, body_300, rate_series
from bench.firing import fire as single_slot_fire
from delayline.adapters.redis_connect import redis_servers
from delayline.adapters.redis_sharded import ShardedNearTermStore
from delayline.domain.events import ScheduledEvent, new_event
from delayline.firing_workers import FiringWorkers
from delayline.settings import Settings

_LOAD_CHUNK = 5000
LEASE_SECONDS = 3.0


def _events(n: int, topic: str, start: int, due: datetime) -> list[ScheduledEvent]:
    body = body_300()
    now = datetime.now(UTC)
    return [
        new_event(topic=topic, body=body, scheduled_at=due, correlation_id=f"c{i}", now=now)
        for i in range(start, start + n)
    ]


async def _balanced(group: FiringWorkers, shards: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    share = {shards // len(group.workers), -(-shards // len(group.workers))}
    while time.monotonic() < deadline:
        statuses = group.ownership
        owned = [len(s["owned"]) for s in statuses]
        if len(statuses) == len(group.workers) and sum(owned) == shards and set(owned) <= share:
            return True
        await asyncio.sleep(0.1)
    return False


async def _workers_run(
    redis_url: str, bootstrap: str, workers: int, shards: int, n: int, batch: int
) -> Result:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    topic = f"bench-workers-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        data_dir=Path("/nonexistent-bench-data"),
        redis_url=SecretStr(redis_url),
        kafka_bootstrap_servers=bootstrap,
        redis_key_prefix=prefix,
        redis_shards=shards,
        lease_seconds=LEASE_SECONDS,
        claim_batch_size=batch,
        node_id=f"bench-{prefix}",
    )
    servers = redis_servers(redis_url, max_connections=16, pool_timeout=10)
    store = ShardedNearTermStore(servers, prefix=prefix, shards=shards)
    sink = CollectingSink()
    group = FiringWorkers(
        settings, workers, redis_url=redis_url, bootstrap_servers=bootstrap, sink=sink
    )
    try:
        await group.start()
        balanced = await _balanced(group, shards, 10 * LEASE_SECONDS)
        await store.schedule(_events(1, topic, n, datetime.now(UTC)))  # topic metadata
        await sink.wait_for(1, 30)
        ahead = 2.0 + n / 25_000  # loading takes about n / 40k s here
        due_wall = time.time() + ahead
        due_perf = time.perf_counter() + ahead
        due = datetime.fromtimestamp(due_wall, UTC)
        for offset in range(0, n, _LOAD_CHUNK):
            await store.schedule(_events(min(_LOAD_CHUNK, n - offset), topic, offset, due))
        loaded_early = time.perf_counter() < due_perf
        await sink.wait_for(n + 1, 60 + n / 1000)
        arrived = sink.arrived[1:]
        done = len(arrived)
        seconds = (arrived[-1] if arrived else time.perf_counter()) - due_perf
        counts = await store.counts()
    finally:
        await group.stop(10)
        await store.delete_all()
        await servers.aclose()
    return {
        "layout": f"{workers} worker process(es)",
        "workers": workers,
        "shards": shards,
        "events": n,
        "fired": done,
        "seconds": seconds,
        "events_per_s": done / seconds if seconds > 0 else 0.0,
        "balanced_before_load": balanced,
        "loaded_before_due": loaded_early,
        "left_pending": counts["pending"],
        "series": rate_series(arrived, due_perf),
    }


async def run(
    redis_url: str,
    bootstrap: str,
    n: int,
    shard_counts: tuple[int, ...] = (1, 4, 16),
    worker_counts: tuple[int, ...] = (1, 2),
    batch: int = 1000,
) -> Result:
    """Every (workers, shards) pair with workers ≤ shards, and the single-slot baseline."""
    baseline = await single_slot_fire(redis_url, bootstrap, n, batch, 1.0)
    single = float(baseline["events_per_s"])
    runs: list[Result] = [
        {
            "layout": "single slot, one in-process dispatcher",
            "workers": 0,
            "shards": 1,
            "events": n,
            "events_per_s": single,
        }
    ]
    for workers in worker_counts:
        for shards in shard_counts:
            if workers <= shards:
                runs.append(await _workers_run(redis_url, bootstrap, workers, shards, n, batch))
    for r in runs:
        r["ratio_to_single_slot"] = float(r["events_per_s"]) / single if single else 0.0
    by_pair = {(r["workers"], r["shards"]): float(r["events_per_s"]) for r in runs}
    scaling = {
        f"{shards} shards": by_pair[(2, shards)] / by_pair[(1, shards)]
        for shards in shard_counts
        if (2, shards) in by_pair and by_pair.get((1, shards))
    }
    best = max(runs, key=lambda r: float(r["events_per_s"]))
    return {
        "scenario": "workers: firing throughput per worker processes and shards",
        "events_per_s": float(best["events_per_s"]),
        "best_layout": f"{best['layout']}, {best['shards']} shards",
        "single_slot_events_per_s": single,
        "two_over_one_worker": scaling,
        "batch": batch,
        "runs": runs,
    }

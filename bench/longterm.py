"""Scenarios 1c (long-term inserts into ClickHouse) and 5 (the ClickHouse → Redis sync).

Runs on the embedded chDB engine (one data folder per process, opened once). 1c inserts
``n_insert`` events due in 30 days through ``ClickHouseLongTermStore.insert`` in chunks of
10 000 (each chunk checks which ids exist, then writes one Arrow insert). 5 then adds ``n_due``
events due within the transfer horizon and times one ``SyncService.sync_once`` moving them
into Redis, out of ``n_total`` long-term events.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

from bench.common import Result, body_300, near_store
from bench.common import redis_client as make_client
from delayline.adapters.clickhouse.client import ClickHouseClient
from delayline.adapters.clickhouse.locks import RedisLease
from delayline.adapters.clickhouse.long_term_store import ClickHouseLongTermStore
from delayline.adapters.clickhouse.migrations import run_migrations
from delayline.clock import SystemClock
from delayline.domain.events import ScheduledEvent, new_event
from delayline.services.sync import SyncService

_CHUNK = 10_000
_HORIZON_S = 3600.0


def _events(n: int, due_in_s: float, start: int) -> list[ScheduledEvent]:
    now = SystemClock().now()
    due = now + timedelta(seconds=due_in_s)
    body = body_300()
    return [
        new_event(topic="bench-lt", body=body, scheduled_at=due, correlation_id=f"c{i}", now=now)
        for i in range(start, start + n)
    ]


async def _insert(store: ClickHouseLongTermStore, n: int, due_in_s: float, start: int) -> float:
    """Insert ``n`` events; returns the seconds spent in ``insert`` (building excluded)."""
    spent = 0.0
    for offset in range(0, n, _CHUNK):
        events = _events(min(_CHUNK, n - offset), due_in_s, start + offset)
        t0 = time.perf_counter()
        inserted = await store.insert(events)
        spent += time.perf_counter() - t0
        assert all(inserted)
    return spent


async def run(redis_url: str, chdb_dsn: str, n_insert: int, n_total: int, n_due: int) -> Result:
    """1c then 5; ``n_total`` long-term events in all, ``n_due`` of them due soon.

    ``chdb_dsn``: ``chdb:///abs/folder`` (embedded) or a ClickHouse server's URL.
    """
    client = ClickHouseClient(chdb_dsn, f"bench_{uuid.uuid4().hex[:8]}")
    await client.start()
    try:
        await run_migrations(client, ttl_days=30)
        store = ClickHouseLongTermStore(client)
        insert_s = await _insert(store, n_insert, 30 * 86400, 0)
        filler = max(0, n_total - n_insert - n_due)
        await _insert(store, filler, 30 * 86400, n_insert)
        await _insert(store, n_due, _HORIZON_S / 2, n_insert + filler)
        async with near_store(redis_url) as near:
            lease_client = make_client(redis_url)
            lease = RedisLease(lease_client, f"{{bench}}:sync-lease:{uuid.uuid4().hex[:6]}", 30)
            sync = SyncService(
                near,
                store,
                lease,
                SystemClock(),
                transfer_horizon_seconds=_HORIZON_S,
                retention_days=30,
            )
            t0 = time.perf_counter()
            moved = await sync.sync_once()
            sync_s = time.perf_counter() - t0
            pending = (await near.counts())["pending"]
            await lease_client.aclose()
    finally:
        await client.stop()
    return {
        "scenario": "1c long-term insert, 5 sync",
        "n_insert": n_insert,
        "insert_seconds": insert_s,
        "insert_events_per_s": n_insert / insert_s,
        "n_total": n_insert + filler + n_due,
        "n_due": n_due,
        "moved": moved,
        "redis_pending_after": pending,
        "sync_seconds": sync_s,
        "target_sync_seconds_100k": 2.0,
    }

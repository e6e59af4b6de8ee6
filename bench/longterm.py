"""Scenarios 1c (long-term inserts into ClickHouse) and 5 (the ClickHouse → Redis sync).

Runs on the embedded chDB engine (one data folder per process, opened once). 1c inserts
``n_insert`` events due in 30 days through ``ClickHouseLongTermStore.insert`` in chunks of
10 000 (each chunk checks which ids exist, then writes one Arrow insert).

5 then fills the table up to ``n_total - n_due`` events with ONE server-side
``INSERT INTO … SELECT … FROM numbers(N)`` (:func:`filler_sql`: rows shaped like those
``insert`` writes — 300-byte bodies, uuid4 ids, due in ~30 days, pending, version 1 — because
``insert`` takes ~20k events/s, i.e. minutes for 10M), adds ``n_due`` events due within the
transfer horizon through ``insert``, waits for ClickHouse's background merges to finish (a
table that has held its events for a while, not one loaded a second ago; the wait is recorded)
and times one ``SyncService.sync_once`` moving them into Redis, out of ``n_total`` long-term
events. The result records how the filler was made, the sizes, and the parts at sync time.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta

from bench.common import BODY_BYTES, Result, body_300, near_store
from bench.common import redis_client as make_client
from delayline.adapters.clickhouse.client import ClickHouseClient
from delayline.adapters.clickhouse.long_term_store import ClickHouseLongTermStore
from delayline.adapters.clickhouse.migrations import EVENTS_TABLE, run_migrations
from delayline.adapters.redis_lease import RedisLease
from delayline.clock import SystemClock
from delayline.domain.events import ScheduledEvent, new_event, to_epoch_us
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


_BODY_HEAD = '{"user_id":'
_BODY_MID = ',"kind":"reminder","pad":"'
_BODY_TAIL = '"}'


def filler_sql(table: str) -> str:
    """``INSERT INTO table … SELECT … FROM numbers(N)``: ``{n}`` pending events, made by the server.

    Each row looks like one :meth:`ClickHouseLongTermStore.insert` writes for a ``bench-lt``
    event: a 32-hex ``uuid4`` id, ``correlation_id`` ``c<i>``, a 300-byte JSON body (``body_300``'s
    shape with a random pad of base64 letters, so rows do not compress to nothing), due 30 days
    from now spread over one day, ``created_at`` = ``updated_at`` = now, ``status`` pending,
    ``version`` 1 and ``retain_from`` = ``listed_at`` = ``scheduled_at`` (what ``insert`` writes).
    Parameters: ``n`` (rows), ``start`` (first index), ``now_us`` (epoch microseconds).
    """
    fixed = len(_BODY_HEAD) + len(_BODY_MID) + len(_BODY_TAIL)
    return (
        f"INSERT INTO {table} (schedule_id, topic, entity_type, action, body, correlation_id, "
        "headers, scheduled_at, max_delay_seconds, priority, status, created_at, updated_at, "
        "attempts, last_error, version, retain_from, listed_at) "
        "SELECT replaceAll(toString(generateUUIDv4(number)), '-', ''), 'bench-lt', '', '', "
        f"concat('{_BODY_HEAD}', toString(i), '{_BODY_MID}', "
        f"substring(base64Encode(randomString(200, number)), 1, "
        f"{BODY_BYTES - fixed} - length(toString(i))), '{_BODY_TAIL}'), "
        "concat('c', toString(i)), '', due, 86400, 0, 'pending', now, now, 0, '', 1, due, due "
        "FROM (SELECT number, {start:UInt64} + number AS i, "
        "fromUnixTimestamp64Micro({now_us:Int64}, 'UTC') AS now, "
        f"fromUnixTimestamp64Micro({{now_us:Int64}} + {30 * 86400 * 1_000_000} "
        f"+ toInt64(cityHash64(number, 'due') % {86400 * 1_000_000}), 'UTC') AS due "
        "FROM numbers({n:UInt64}))"
    )


async def _fill(client: ClickHouseClient, n: int, start: int) -> float:
    """Insert ``n`` filler events server-side (:func:`filler_sql`); returns the seconds."""
    t0 = time.perf_counter()
    if n:
        now_us = to_epoch_us(SystemClock().now())
        await client.command(
            filler_sql(f"{client.database}.{EVENTS_TABLE}"),
            {"n": n, "start": start, "now_us": now_us},
        )
    return time.perf_counter() - t0


async def _settle(client: ClickHouseClient, limit_s: float = 900.0) -> float:
    """Wait until no merge of this database runs (at most ``limit_s``); returns the seconds."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        rows = await client.query(
            "SELECT count() FROM system.merges WHERE database = {db:String}",
            {"db": client.database},
        )
        if not rows or not int(rows[0][0]):
            break
        await asyncio.sleep(1.0)
    return time.perf_counter() - t0


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
        filler_s = await _fill(client, filler, n_insert)
        await _insert(store, n_due, _HORIZON_S / 2, n_insert + filler)
        merges_s = await _settle(client)
        parts = await client.query(
            "SELECT count(), sum(rows) FROM system.parts "
            "WHERE database = {db:String} AND table = {t:String} AND active",
            {"db": client.database, "t": EVENTS_TABLE},
        )
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
        "n_filler": filler,
        "filler": "one server-side INSERT INTO … SELECT … FROM numbers(n_filler) "
        "(bench.longterm.filler_sql): rows as insert writes them, 300-byte bodies",
        "filler_seconds": filler_s,
        "n_due": n_due,
        "merges_waited_seconds": merges_s,
        "parts_at_sync": int(parts[0][0]),
        "rows_at_sync": int(parts[0][1]),
        "moved": moved,
        "redis_pending_after": pending,
        "sync_seconds": sync_s,
        "target_sync_seconds_100k": 2.0,
    }

"""Scenario 6: finding and cancelling events by business key among ``n_total`` long-term events.

Fills ``event_schedules`` with ``bench.longterm.filler_sql`` (one server-side insert), then
gives every filler event the ``scheduled`` row of its history in ``event_lifecycle`` (one
``INSERT … SELECT`` from ``event_schedules``: what the scheduler's recorder writes for each
event it stores), schedules ``n_key`` events under each of ``1 + 2 * repeat`` correlation ids
through ``SchedulerService`` (both tables, as in service), waits for merges, then times:

- ``list_by_key``: ``find_events`` for that correlation id (``n_key`` events), and for one
  filler event's correlation id (1 event) — median of ``repeat`` runs each;
- ``cancel_by_key`` and ``reschedule_by_key`` (to another time in ClickHouse): ``n_key``
  events each, median over ``repeat`` keys (an acted-on key has no live events left).
"""

from __future__ import annotations

import statistics
import time
import uuid
from datetime import timedelta

from bench.common import Result, body_300, near_store
from bench.longterm import _fill, _settle
from delayline.adapters.clickhouse.client import ClickHouseClient
from delayline.adapters.clickhouse.lifecycle_store import ClickHouseLifecycleStore
from delayline.adapters.clickhouse.long_term_store import ClickHouseLongTermStore
from delayline.adapters.clickhouse.migrations import EVENTS_TABLE, LIFECYCLE_TABLE, run_migrations
from delayline.clock import SystemClock
from delayline.domain.outcomes import EventFilter
from delayline.services.lifecycle import LifecycleRecorder, LifecycleService
from delayline.services.scheduler import SchedulerService

_HISTORIES = (
    "INSERT INTO {db}.{lifecycle} SELECT schedule_id, created_at, 'scheduled', '', 'python', "
    "NULL, NULL, 1, topic, entity_type, action, correlation_id, body, headers, scheduled_at, "
    "max_delay_seconds, priority, created_at, attempts, last_error, "
    "greatest(created_at, scheduled_at) FROM {db}.{events}"
)


async def run(redis_url: str, chdb_dsn: str, n_total: int, n_key: int, repeat: int) -> Result:
    """Fill ``n_total`` events, ``n_key`` of them under one key; time the look-ups."""
    client = ClickHouseClient(chdb_dsn, f"bench_{uuid.uuid4().hex[:8]}")
    await client.start()
    try:
        await run_migrations(client, ttl_days=30)
        filler_s = await _fill(client, n_total - n_key, 0)
        t0 = time.perf_counter()
        await client.command(
            _HISTORIES.format(db=client.database, lifecycle=LIFECYCLE_TABLE, events=EVENTS_TABLE)
        )
        histories_s = time.perf_counter() - t0
        store = ClickHouseLifecycleStore(client)
        lifecycle = LifecycleService(
            store, LifecycleRecorder(store, batch_size=1000, flush_interval=1.0)
        )
        async with near_store(redis_url) as near:
            service = SchedulerService(
                near,
                SystemClock(),
                far=ClickHouseLongTermStore(client),
                lifecycle=lifecycle,
            )
            keys = [f"bench-key-{uuid.uuid4().hex[:6]}" for _ in range(1 + 2 * repeat)]
            key = keys[0]
            due = SystemClock().now() + timedelta(days=30)
            for each in keys:
                events = [
                    service.build_event(
                        topic="bench-lt", body=body_300(), scheduled_at=due, correlation_id=each
                    )
                    for _ in range(n_key)
                ]
                await service.schedule_events(events)
            await lifecycle.recorder.flush()
            merges_s = await _settle(client)
            rows = await client.query(f"SELECT count() FROM {client.database}.{LIFECYCLE_TABLE}")

            async def timed(match: EventFilter) -> tuple[float, int]:
                times, found = [], 0
                for _ in range(repeat):
                    t = time.perf_counter()
                    found = len(await service.find_events(match, limit=1000))
                    times.append(time.perf_counter() - t)
                return statistics.median(times), found

            list_key_s, listed = await timed(EventFilter(correlation_id=key))
            list_one_s, listed_one = await timed(EventFilter(correlation_id="c12345"))
            cancel_times, resched_times = [], []
            cancelled: dict[str, int] = {}
            rescheduled: dict[str, int] = {}
            for n in range(repeat):
                t0 = time.perf_counter()
                cancelled = await service.cancel_by_key(keys[1 + n])
                cancel_times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                rescheduled = await service.reschedule_by_key(
                    keys[1 + repeat + n], due + timedelta(days=1)
                )
                resched_times.append(time.perf_counter() - t0)
                await lifecycle.recorder.flush()
    finally:
        await client.stop()
    return {
        "scenario": "6 find and cancel by key",
        "n_total": n_total,
        "lifecycle_rows": int(rows[0][0]),
        "filler_seconds": filler_s,
        "histories_seconds": histories_s,
        "merges_waited_seconds": merges_s,
        "n_key": n_key,
        "list_by_key_seconds": list_key_s,
        "listed": listed,
        "list_one_seconds": list_one_s,
        "listed_one": listed_one,
        "cancel_by_key_seconds": statistics.median(cancel_times),
        "cancel_by_key_runs": cancel_times,
        "cancelled": cancelled,
        "reschedule_by_key_seconds": statistics.median(resched_times),
        "reschedule_by_key_runs": resched_times,
        "rescheduled": rescheduled,
    }

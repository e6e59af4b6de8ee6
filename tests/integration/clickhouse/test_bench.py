"""Measurements, printed: Arrow insert rate, next-1000-due cost over 1M events.

Run with ``DELAYLINE_BENCH=1 pytest -s tests/integration/clickhouse/test_bench.py`` (skipped
otherwise: a minute or more). No timing is asserted: only the results' correctness.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

import pytest

from delayline.adapters.clickhouse.client import ClickHouseClient
from delayline.adapters.clickhouse.long_term_store import ClickHouseLongTermStore, _Row, _to_arrow
from delayline.adapters.clickhouse.migrations import EVENTS_TABLE
from delayline.domain.events import EventStatus, ScheduledEvent, to_epoch_us

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("DELAYLINE_BENCH"), reason="set DELAYLINE_BENCH=1"),
]

BASE = datetime(2030, 1, 1, tzinfo=UTC)
BODY = "x" * 300


def _events(n: int, offset: int = 0) -> list[ScheduledEvent]:
    return [
        ScheduledEvent(
            schedule_id=f"b{offset + i:09d}",
            topic="bench",
            entity_type="e",
            action="a",
            body=BODY,
            correlation_id="",
            headers={},
            scheduled_at=BASE + timedelta(seconds=(i * 7919) % (60 * 86400)),
            created_at=BASE - timedelta(days=1),
            updated_at=BASE - timedelta(days=1),
        )
        for i in range(n)
    ]


async def test_measure_arrow_inserts_and_final_cost(ch_client: ClickHouseClient) -> None:
    store = ClickHouseLongTermStore(ch_client)
    table = f"{ch_client.database}.{EVENTS_TABLE}"

    events = _events(1_000_000)
    arrow = _to_arrow([_Row(e, 1, e.scheduled_at) for e in events])
    start = time.perf_counter()
    for at in range(0, arrow.num_rows, 100_000):
        await ch_client.insert_arrow(table, arrow.slice(at, 100_000))
    raw = time.perf_counter() - start
    print(f"\nraw Arrow insert: {arrow.num_rows / raw:,.0f} rows/s (1M rows, 100k per insert)")

    fresh = _events(10_000, offset=2_000_000)
    start = time.perf_counter()
    assert await store.insert(fresh) == [True] * 10_000
    took = time.perf_counter() - start
    print(f"store.insert 10k (with insert-if-absent lookup): {10_000 / took:,.0f} events/s")

    # 10 % of the events get a second version, as the sync's 'queued' rows would.
    queued = [
        _Row(e.with_status(EventStatus.QUEUED, at=BASE), 2, e.scheduled_at) for e in events[::10]
    ]
    await ch_client.insert_arrow(table, _to_arrow(queued))

    until = BASE + timedelta(days=30)
    timings = []
    for _ in range(7):
        start = time.perf_counter()
        due = await store.due_before(until, 1000)
        timings.append((time.perf_counter() - start) * 1000)
    timings.sort()
    print(
        f"due_before(limit=1000) over {len(events) + len(fresh):,} events "
        f"(+{len(queued):,} versions), FINAL: min {timings[0]:.1f} ms, median {timings[3]:.1f} ms"
    )
    assert len(due) == 1000
    assert all(e.status == EventStatus.PENDING for e in due)
    dues = [to_epoch_us(e.scheduled_at) for e in due]
    assert dues == sorted(dues)
    start = time.perf_counter()
    counts = await store.counts()
    print(f"counts(): {(time.perf_counter() - start) * 1000:.1f} ms -> {counts}")
    assert counts["queued"] == len(queued)
    start = time.perf_counter()
    assert await store.next_due() is not None
    print(f"next_due(): {(time.perf_counter() - start) * 1000:.1f} ms")

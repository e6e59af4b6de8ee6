"""The recorder against real chDB: batching, interval flushes, outages, disabled."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from delayline.adapters.clickhouse.analytics_store import ClickHouseAnalyticsStore
from delayline.domain.outcomes import ExecutionResult
from delayline.services.analytics import AnalyticsRecorder, ScheduleAnalyticsService

from .conftest import AnalyticsDb
from .test_analytics_store import result

NOW = datetime.now(UTC)


class CountingWriter:
    """The real store, remembering the size of every batch it was given."""

    def __init__(self, store: ClickHouseAnalyticsStore) -> None:
        self.store = store
        self.batches: list[int] = []

    async def write_results(self, results: Sequence[ExecutionResult]) -> None:
        self.batches.append(len(results))
        await self.store.write_results(results)


async def until(condition: Callable[[], bool]) -> None:
    """Wait for ``condition`` (the per-test timeout bounds the wait)."""
    while not condition():  # noqa: ASYNC110 - polling a plain attribute, no event to await
        await asyncio.sleep(0.01)


async def stored(db: AnalyticsDb) -> int:
    rows = await db.client.query(f"SELECT count() FROM {db.name}.schedule_execution_results")
    return int(rows[0][0])


def results(n: int) -> list[ExecutionResult]:
    return [result(NOW - timedelta(seconds=i), 0.01 * i) for i in range(n)]


async def test_batches_by_size(analytics_db: AnalyticsDb) -> None:
    writer = CountingWriter(analytics_db.store)
    recorder = AnalyticsRecorder(writer, batch_size=5, flush_interval=3600, max_insert=5)
    await recorder.start()
    for item in results(12):
        recorder.record(item)
    await until(lambda: recorder.written == 10)
    assert writer.batches == [5, 5]
    assert recorder.buffered == 2
    assert await stored(analytics_db) == 10
    await recorder.stop()
    assert writer.batches == [5, 5, 2]
    assert await stored(analytics_db) == 12
    assert (recorder.dropped, recorder.failed_writes) == (0, 0)


async def test_flushes_by_interval(analytics_db: AnalyticsDb) -> None:
    writer = CountingWriter(analytics_db.store)
    async with AnalyticsRecorder(writer, batch_size=1000, flush_interval=0.05) as recorder:
        for item in results(3):
            recorder.record(item)
        await until(lambda: recorder.written == 3)
        assert writer.batches == [3]
        assert await stored(analytics_db) == 3


async def test_keeps_going_through_a_clickhouse_outage(analytics_db: AnalyticsDb) -> None:
    """Writes into a dropped database fail; record() stays instant, the buffer stays bounded
    (oldest dropped), and once the database is back the kept results are written."""
    db, client = analytics_db.name, analytics_db.client
    await client.command(f"DROP DATABASE {db} SYNC")
    recorder = AnalyticsRecorder(
        analytics_db.store,
        batch_size=4,
        flush_interval=0.02,
        max_buffered=6,
        retry_initial=0.01,
        retry_max=0.05,
    )
    await recorder.start()
    items = results(10)
    for item in items:
        recorder.record(item)  # a plain call: nothing to await, nothing raised
    await until(lambda: recorder.failed_writes >= 3)
    assert recorder.written == 0
    assert recorder.buffered == 6
    assert recorder.dropped == 4
    await analytics_db.recreate()
    await until(lambda: recorder.written == 6)
    await recorder.stop()
    ids = await client.query(f"SELECT execution_id FROM {db}.schedule_execution_results")
    assert sorted(row[0] for row in ids) == sorted(r.execution_id for r in items[4:])


async def test_a_hung_write_does_not_block_record(analytics_db: AnalyticsDb) -> None:
    release = asyncio.Event()

    class StuckWriter:
        calls = 0

        async def write_results(self, batch: Sequence[ExecutionResult]) -> None:
            StuckWriter.calls += 1
            await release.wait()
            await analytics_db.store.write_results(batch)

    recorder = AnalyticsRecorder(StuckWriter(), batch_size=2, flush_interval=3600, max_buffered=2)
    await recorder.start()
    for item in results(2):
        recorder.record(item)
    await until(lambda: StuckWriter.calls == 1)
    for item in results(3):  # while the write hangs
        recorder.record(item)
    assert recorder.buffered == 2  # the bound: the oldest of the 3 was dropped
    assert recorder.dropped == 1
    release.set()
    await recorder.stop()
    assert recorder.written == 4
    assert await stored(analytics_db) == 4


async def test_disabled_writes_nothing(analytics_db: AnalyticsDb) -> None:
    writer = CountingWriter(analytics_db.store)
    recorder = AnalyticsRecorder(writer, batch_size=1, flush_interval=0.01, enabled=False)
    service = ScheduleAnalyticsService(analytics_db.store, recorder=recorder, enabled=False)
    await service.initialize()
    for item in results(5):
        recorder.record(item)
    assert await recorder.flush() == 0
    await service.close()
    assert writer.batches == []
    assert await stored(analytics_db) == 0
    start = NOW - timedelta(days=1)
    assert await service.get_performance_metrics(start_date=start, end_date=NOW) == []
    assert (await service.get_summary(start, NOW))["enabled"] is False


async def test_service_end_to_end(analytics_db: AnalyticsDb) -> None:
    recorder = AnalyticsRecorder(analytics_db.store, batch_size=100, flush_interval=3600)
    service = ScheduleAnalyticsService(analytics_db.store, recorder=recorder)
    await service.initialize()
    for item in results(7):
        recorder.record(item)
    await service.close()
    start = NOW - timedelta(hours=1)
    end = NOW + timedelta(hours=1)
    summary = await service.get_summary(start, end)
    assert (summary["enabled"], summary["total_executions"]) == (True, 7)
    rows = await service.get_performance_metrics(
        start_date=start, end_date=end, entity_type="user", granularity="day"
    )
    assert sum(r["total_executions"] for r in rows) == 7

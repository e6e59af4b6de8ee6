"""AnalyticsRecorder and ScheduleAnalyticsService with fakes: buffering, retries, no I/O."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from delayline.domain.events import new_event
from delayline.domain.outcomes import ExecutionResult, Outcome
from delayline.ports import Granularity
from delayline.services.analytics import (
    BUFFER_BATCHES,
    AnalyticsRecorder,
    ScheduleAnalyticsService,
)

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def make(n: int) -> list[ExecutionResult]:
    event = new_event(topic="t", scheduled_at=NOW, now=NOW)
    return [
        ExecutionResult(uuid.uuid4().hex, event, NOW, Outcome.SUCCESS, None, 0, 1, "n")
        for _ in range(n)
    ]


class FakeWriter:
    """Records batches; fails while ``failing`` is set."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.failing = False
        self.attempts = 0

    async def write_results(self, results: Sequence[ExecutionResult]) -> None:
        self.attempts += 1
        if self.failing:
            raise ConnectionError("clickhouse down")
        self.batches.append([r.execution_id for r in results])

    def ids(self) -> list[str]:
        """Every written id, in write order."""
        return [i for batch in self.batches for i in batch]


async def until(condition: Callable[[], bool]) -> None:
    while not condition():  # noqa: ASYNC110 - polling a plain attribute, no event to await
        await asyncio.sleep(0.005)


async def test_record_buffers_and_flush_writes_in_batches_in_order() -> None:
    writer = FakeWriter()
    recorder = AnalyticsRecorder(writer, batch_size=3, flush_interval=3600, max_insert=3)
    items = make(7)
    for item in items:
        recorder.record(item)
    assert recorder.buffered == 7  # not started: nothing written yet
    assert await recorder.flush() == 7
    assert [len(b) for b in writer.batches] == [3, 3, 1]
    assert writer.ids() == [r.execution_id for r in items]
    assert (recorder.written, recorder.buffered) == (7, 0)


async def test_a_backlog_goes_in_few_inserts() -> None:
    writer = FakeWriter()
    recorder = AnalyticsRecorder(writer, batch_size=3, flush_interval=3600, max_insert=6)
    for item in make(14):
        recorder.record(item)
    await recorder.flush()
    assert [len(b) for b in writer.batches] == [6, 6, 2]


async def test_size_trigger_writes_whole_batches_only() -> None:
    writer = FakeWriter()
    async with AnalyticsRecorder(writer, batch_size=3, flush_interval=3600) as recorder:
        for item in make(8):
            recorder.record(item)
        await until(lambda: recorder.written == 6)
        assert [len(b) for b in writer.batches] == [6]  # one insert for the backlog
        assert recorder.buffered == 2  # the partial tail waits for the interval or stop
    assert [len(b) for b in writer.batches] == [6, 2]


async def test_default_bound_and_oldest_dropped_first() -> None:
    writer = FakeWriter()
    recorder = AnalyticsRecorder(writer, batch_size=2, flush_interval=3600)
    items = make(2 * BUFFER_BATCHES + 3)
    for item in items:
        recorder.record(item)
    assert (recorder.buffered, recorder.dropped) == (2 * BUFFER_BATCHES, 3)
    await recorder.flush()
    assert writer.ids() == [r.execution_id for r in items[3:]]


async def test_failed_flush_keeps_the_batch_and_raises() -> None:
    writer = FakeWriter()
    writer.failing = True
    recorder = AnalyticsRecorder(writer, batch_size=2, flush_interval=3600, max_buffered=3)
    items = make(3)
    for item in items:
        recorder.record(item)
    with pytest.raises(ConnectionError):
        await recorder.flush()
    assert (recorder.buffered, recorder.failed_writes, recorder.dropped) == (3, 1, 0)
    assert isinstance(recorder.last_error, ConnectionError)
    writer.failing = False
    await recorder.flush()
    assert writer.ids() == [r.execution_id for r in items]


async def test_failure_with_newer_results_drops_the_oldest() -> None:
    """A batch put back after a failure goes in front; the bound then drops the oldest."""
    release = asyncio.Event()
    items = make(4)

    writer = FakeWriter()

    class Slow:
        healed = False

        async def write_results(self, results: Sequence[ExecutionResult]) -> None:
            if Slow.healed:
                await writer.write_results(results)
                return
            await release.wait()
            raise ConnectionError("down")

    recorder = AnalyticsRecorder(Slow(), batch_size=2, flush_interval=3600, max_buffered=3)
    recorder.record(items[0])
    recorder.record(items[1])
    flushing = asyncio.create_task(recorder.flush())
    await until(lambda: recorder.buffered == 0)  # the batch is in flight
    recorder.record(items[2])
    recorder.record(items[3])
    release.set()
    with pytest.raises(ConnectionError):
        await flushing
    assert recorder.dropped == 1
    assert recorder.buffered == 3
    Slow.healed = True
    await recorder.flush()
    assert writer.ids() == [r.execution_id for r in items[1:]]


async def test_background_retries_with_backoff_then_recovers() -> None:
    writer = FakeWriter()
    writer.failing = True
    recorder = AnalyticsRecorder(
        writer, batch_size=2, flush_interval=0.01, retry_initial=0.001, retry_max=0.01
    )
    async with recorder:
        for item in make(5):
            recorder.record(item)
        await until(lambda: writer.attempts >= 4)
        assert recorder.written == 0
        writer.failing = False
        await until(lambda: recorder.written == 5)
    assert recorder.failed_writes >= 4
    assert recorder.dropped == 0


async def test_stop_flushes_the_rest_and_is_idempotent() -> None:
    writer = FakeWriter()
    recorder = AnalyticsRecorder(writer, batch_size=100, flush_interval=3600)
    await recorder.start()
    for item in make(3):
        recorder.record(item)
    await recorder.stop()
    await recorder.stop()
    assert [len(b) for b in writer.batches] == [3]


async def test_stop_counts_what_it_could_not_write() -> None:
    writer = FakeWriter()
    writer.failing = True
    recorder = AnalyticsRecorder(writer, batch_size=100, flush_interval=3600)
    await recorder.start()
    for item in make(3):
        recorder.record(item)
    await recorder.stop()  # does not raise
    assert (recorder.dropped, recorder.buffered) == (3, 0)


async def test_disabled_is_a_no_op() -> None:
    writer = FakeWriter()
    recorder = AnalyticsRecorder(writer, batch_size=1, flush_interval=0.001, enabled=False)
    await recorder.start()
    recorder.record(make(1)[0])
    assert recorder.buffered == 0
    assert await recorder.flush() == 0
    await recorder.stop()
    assert writer.attempts == 0


def test_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="positive"):
        AnalyticsRecorder(FakeWriter(), batch_size=0, flush_interval=1)


class FakeQueries:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.verified = False

    async def verify_schema(self) -> None:
        self.verified = True

    async def performance(
        self,
        start: datetime,
        end: datetime,
        *,
        entity_type: str | None = None,
        action: str | None = None,
        topic: str | None = None,
        granularity: Granularity = "hour",
        tenant: str | None = None,
    ) -> list[dict[str, Any]]:
        self.calls.append(("performance", (entity_type, action, topic, granularity, tenant)))
        return [{"total_executions": 1}]

    async def summary(
        self, start: datetime, end: datetime, *, tenant: str | None = None
    ) -> dict[str, Any]:
        self.calls.append(("summary", (start, end, tenant)))
        return {"total_executions": 1}


async def test_service_passes_filters_and_checks_ranges() -> None:
    queries = FakeQueries()
    service = ScheduleAnalyticsService(queries)
    await service.initialize()
    assert queries.verified
    start, end = NOW - timedelta(days=7), NOW
    rows = await service.get_performance_metrics(
        start_date=start,
        end_date=end,
        entity_type="user",
        topic="t",
        granularity="day",
        tenant="acme",
    )
    assert rows == [{"total_executions": 1}]
    assert queries.calls[0] == ("performance", ("user", None, "t", "day", "acme"))
    assert await service.get_summary(start, end) == {"enabled": True, "total_executions": 1}
    assert queries.calls[1] == ("summary", (start, end, None))
    await service.get_summary(start, end, tenant="acme")
    assert queries.calls[2] == ("summary", (start, end, "acme"))
    with pytest.raises(ValueError, match="after"):
        await service.get_summary(end, start)
    # naive datetimes (as from datetime.utcnow()) are UTC
    assert await service.get_summary(start.replace(tzinfo=None), end) == {
        "enabled": True,
        "total_executions": 1,
    }


async def test_disabled_service_touches_nothing() -> None:
    queries = FakeQueries()
    service = ScheduleAnalyticsService(queries, enabled=False)
    await service.initialize()
    assert not queries.verified
    assert await service.get_performance_metrics(NOW - timedelta(hours=1), NOW) == []
    assert (await service.get_summary(NOW - timedelta(hours=1), NOW))["enabled"] is False
    assert queries.calls == []

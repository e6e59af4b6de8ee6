"""Analytics: execution results recorded off the firing path, and the metrics read back.

``AnalyticsRecorder`` is the dispatcher's :class:`~delayline.ports.OutcomeSink`. ``record()``
only appends to an in-memory buffer; a background task writes the buffer to the analytics
store in batches of ``ANALYTICS_BATCH_SIZE`` (as soon as a batch is full) or every flush
interval (whatever is there), one Arrow insert per write. A slow or failing ClickHouse
therefore never delays firing: it only makes the buffer wait, and beyond its bound the oldest
results are dropped and counted.

What a crash can lose: the results recorded but not yet written. While ClickHouse keeps up,
that is at most one unflushed batch: a full batch is handed to ClickHouse at once and a partial
one within the flush interval (plus, if the crash hits during an insert that ClickHouse had not
yet committed, that batch). While ClickHouse is slow or down, results wait in the buffer, up to
``max_buffered`` (default ``BUFFER_BATCHES`` batches: room for bursts and short outages);
beyond that the oldest are dropped and counted in ``dropped``, and a crash loses what waits.
Pass ``max_buffered=batch_size`` to cap the loss at one batch at the price of dropping during
bursts and outages. A clean ``stop()`` writes what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from delayline.backoff import backoff_ceiling
from delayline.domain.events import as_utc
from delayline.domain.outcomes import ExecutionResult
from delayline.ports import AnalyticsReader, Granularity, ResultWriter

log = logging.getLogger(__name__)

T = TypeVar("T")

BUFFER_BATCHES = 100
"""Default buffer bound, in batches: room for short outages, and for a burst's items (three
lifecycle transitions per fired event) arriving faster than one insert at a time writes them;
ten batches overflowed during a burst and dropped history."""
INSERT_BATCHES = 10
"""Default largest insert, in batches."""


class BatchRecorder(Generic[T]):
    """Buffers items and writes them in batches from a background task.

    ``record()`` may be called from any thread (the dispatcher may run on its own): it appends
    under a lock, never blocks and never raises. The writer task runs on the loop that called
    :meth:`start`.

    A write starts as soon as ``batch_size`` items wait (whole batches only) or after
    ``flush_interval`` (everything). A backlog is written in one insert of up to
    ``max_insert`` items (default ``INSERT_BATCHES`` batches). At most ``max_buffered``
    items wait (default ``BUFFER_BATCHES`` batches); beyond, the oldest are dropped. A failed
    write keeps its items and is retried after ``retry_initial`` seconds, doubling up to
    ``retry_max``; a write taking longer than ``write_timeout`` counts as failed.
    """

    name = "recorder"

    def __init__(
        self,
        write: Callable[[Sequence[T]], Awaitable[None]],
        *,
        batch_size: int,
        flush_interval: float,
        enabled: bool = True,
        max_buffered: int | None = None,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        write_timeout: float = 30.0,
        max_insert: int | None = None,
    ) -> None:
        if batch_size <= 0 or flush_interval <= 0:
            raise ValueError("batch_size and flush_interval must be positive")
        self._write = write
        self._batch_size = batch_size
        self._interval = flush_interval
        self.enabled = enabled
        self._max_buffered = max(max_buffered or BUFFER_BATCHES * batch_size, 1)
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._write_timeout = write_timeout
        self._max_insert = max(max_insert or INSERT_BATCHES * batch_size, batch_size)
        self._buffer: deque[T] = deque()
        # Taking items out, putting them back and dropping them happen under this lock;
        # adding one (record(), from any thread) needs none.
        self._buffer_lock = threading.Lock()
        self._full = asyncio.Event()  # a whole batch is waiting
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()  # one write at a time keeps the buffer in order
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        """Items written so far."""
        self.dropped = 0
        """Items dropped: the buffer was full, or the final write at stop failed."""
        self.failed_writes = 0
        """Batches whose write failed (and were kept for a retry)."""
        self.last_error: BaseException | None = None

    @property
    def buffered(self) -> int:
        """Items waiting to be written."""
        return len(self._buffer)

    def snapshot(self) -> list[T]:
        """A copy of the items waiting to be written, oldest first."""
        with self._buffer_lock:
            return list(self._buffer)

    def record(self, item: T) -> None:
        """Take one item; it is written within a batch or a flush interval."""
        if not self.enabled:
            return
        # No lock unless over the bound: ``deque.append`` is atomic, and the firing thread
        # must never wait for the writer's thread to let go of the lock.
        self._buffer.append(item)
        size = len(self._buffer)
        if size > self._max_buffered:
            with self._buffer_lock:
                while len(self._buffer) > self._max_buffered:
                    self._buffer.popleft()
                    self.dropped += 1
        full = size >= self._batch_size
        if full and not self._full.is_set():
            if self._loop is None or threading.get_ident() == self._loop_thread:
                self._full.set()
            else:
                with contextlib.suppress(RuntimeError):  # the loop closed: stop() flushed
                    self._loop.call_soon_threadsafe(self._full.set)

    async def start(self) -> None:
        """Start the background writer (nothing when disabled)."""
        if not self.enabled or self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Stop the writer and write what is left (once; a failure drops it). Idempotent."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        self._full.set()
        await task
        try:
            await self.flush()
        except Exception as exc:
            log.warning("%s: %d items lost at stop: %r", self.name, len(self._buffer), exc)
            with self._buffer_lock:
                self.dropped += len(self._buffer)
                self._buffer.clear()

    async def flush(self) -> int:
        """Write everything buffered now; returns how many. On failure the items stay
        buffered and the error is raised."""
        written = 0
        while self._buffer:
            written += await self._write_batch()
        return written

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._full.wait(), self._interval)
                whole_batches_only = True  # woken by size: leave a partial tail for later
            except TimeoutError:
                whole_batches_only = False
            self._full.clear()
            if self._stopping.is_set():
                return
            try:
                while self._buffer and (
                    not whole_batches_only or len(self._buffer) >= self._batch_size
                ):
                    await self._write_batch(whole_batches_only=whole_batches_only)
                failures = 0
            except Exception as exc:
                # Not a library retry: the batch stays in the buffer (newer items keep
                # arriving behind it, the oldest dropped beyond the bound) and is retried
                # after a growing pause that stop() interrupts.
                failures += 1
                pause = backoff_ceiling(failures - 1, self._retry_initial, self._retry_max)
                log.warning("%s: write failed (%r); retrying in %.1fs", self.name, exc, pause)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), pause)

    async def _write_batch(self, *, whole_batches_only: bool = False) -> int:
        async with self._lock:
            # A backlog of several batches goes in one insert (up to ``max_insert``): an
            # insert has a fixed cost (the materialized view runs per insert)
            # that would otherwise cap the rate at a few batches per second.
            with self._buffer_lock:
                count = min(len(self._buffer), self._max_insert)
                if whole_batches_only and count >= self._batch_size:
                    count -= count % self._batch_size
                batch = [self._buffer.popleft() for _ in range(count)]
            try:
                await asyncio.wait_for(self._write(batch), self._write_timeout)
            except BaseException as exc:
                self._restore(batch)
                if isinstance(exc, Exception):
                    self.failed_writes += 1
                    self.last_error = exc
                raise
            self.written += count
            return count

    def _restore(self, batch: list[T]) -> None:
        """Put a failed batch back in front, dropping the oldest beyond the bound."""
        with self._buffer_lock:
            self._buffer.extendleft(reversed(batch))
            while len(self._buffer) > self._max_buffered:
                self._buffer.popleft()
                self.dropped += 1


class AnalyticsRecorder(BatchRecorder[ExecutionResult]):
    """The dispatcher's :class:`~delayline.ports.OutcomeSink` for execution results."""

    name = "analytics"

    def __init__(self, writer: ResultWriter, **options: Any) -> None:
        super().__init__(writer.write_results, **options)


class ScheduleAnalyticsService:
    """The analytics service: performance metrics and a summary over a time range.

    With ``enabled=False`` it touches nothing: ``initialize()`` does not check the schema and
    the reads return empty results.
    """

    def __init__(
        self,
        queries: AnalyticsReader,
        *,
        recorder: AnalyticsRecorder | None = None,
        enabled: bool = True,
    ) -> None:
        self._queries = queries
        self.recorder = recorder
        self.enabled = enabled

    async def initialize(self) -> None:
        """Check the analytics tables exist and start the recorder (when enabled)."""
        if not self.enabled:
            return
        await self._queries.verify_schema()
        if self.recorder is not None:
            await self.recorder.start()

    async def close(self) -> None:
        """Stop the recorder, writing what it still holds."""
        if self.recorder is not None:
            await self.recorder.stop()

    async def get_performance_metrics(
        self,
        start_date: datetime,
        end_date: datetime,
        entity_type: str | None = None,
        action: str | None = None,
        topic: str | None = None,
        granularity: Granularity = "hour",
        tenant: str | None = None,
    ) -> list[dict[str, Any]]:
        """The ``schedule_performance_metrics`` rows per hour or per UTC day between
        ``start_date`` (rounded down to the hour) and ``end_date`` (exclusive), of ``tenant``'s
        executions (None: every tenant's, summed)."""
        start_date, end_date = _check_range(start_date, end_date)
        if not self.enabled:
            return []
        return await self._queries.performance(
            start_date,
            end_date,
            entity_type=entity_type,
            action=action,
            topic=topic,
            granularity=granularity,
            tenant=tenant,
        )

    async def get_summary(
        self, start_date: datetime, end_date: datetime, tenant: str | None = None
    ) -> dict[str, Any]:
        """Totals, success rate, lateness percentiles and the top failing entity types and
        actions between ``start_date`` and ``end_date``, of ``tenant``'s executions (None:
        every tenant's)."""
        start_date, end_date = _check_range(start_date, end_date)
        if not self.enabled:
            return {"enabled": False, "start": start_date, "end": end_date}
        summary = await self._queries.summary(start_date, end_date, tenant=tenant)
        return {"enabled": True, **summary}


def _check_range(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """Both ends in UTC (naive ones, as from ``datetime.utcnow()``, are taken as UTC)."""
    start, end = as_utc(start), as_utc(end)
    if end <= start:
        raise ValueError("end_date must be after start_date")
    return start, end

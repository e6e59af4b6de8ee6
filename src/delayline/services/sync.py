"""The background sync (ClickHouse → Redis) and the cleanup of both tiers.

The sync moves events due within ``TRANSFER_HORIZON_SECONDS`` into Redis exactly once, even with
several nodes or a node dying halfway:

1. a lease (Redis, with a fencing token) keeps two nodes from doing the same work at once;
2. the events go into Redis insert-if-absent, so a re-run after a crash adds nothing twice;
3. only then does ClickHouse say ``queued`` — and only for events unchanged since they were
   read; the ones cancelled or rescheduled meanwhile are taken back out of Redis.

A node killed between 2 and 3 leaves the events ``pending`` in ClickHouse and present in Redis:
the next sync re-inserts nothing and writes ``queued``. Nothing is lost, nothing doubled.

The next batch is read from ClickHouse (``due_after`` the last event read) while Redis takes
the current one, so the two work in parallel; each batch still goes read → Redis → ``queued``
in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Generic

from delayline.domain.events import ScheduledEvent
from delayline.ports import Clock, Lease, LongTermStore, NearTermStore, PageT

log = logging.getLogger(__name__)


class SyncService(Generic[PageT]):
    """Runs the sync and the cleanup, periodically and on demand."""

    def __init__(
        self,
        near: NearTermStore,
        far: LongTermStore[PageT],
        lease: Lease,
        clock: Clock,
        *,
        transfer_horizon_seconds: float,
        retention_days: int,
        batch_size: int = 10_000,
        on_run: Callable[[str, float, int], None] | None = None,
        on_moved: Callable[[Sequence[ScheduledEvent]], None] | None = None,
    ) -> None:
        self._near = near
        self._far = far
        self._lease = lease
        self._clock = clock
        self._horizon = timedelta(seconds=transfer_horizon_seconds)
        self._retention = timedelta(days=retention_days)
        self._batch = batch_size
        self._on_run = on_run or (lambda _result, _seconds, _moved: None)
        self._on_moved = on_moved
        self._lock = asyncio.Lock()  # one sync at a time within this process
        self.runs = 0
        self.moved_total = 0
        self.last_run_at: datetime | None = None
        self.last_duration_s: float | None = None
        self.last_moved = 0
        self.last_error: str | None = None

    async def sync_once(self) -> int:
        """Move due-soon events into Redis now; returns how many (0 if another node syncs)."""
        async with self._lock:
            started = time.perf_counter()
            try:
                moved = await self._sync_under_lease()
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._on_run("error", time.perf_counter() - started, 0)
                raise
            self.runs += 1
            self.moved_total += moved
            self.last_moved = moved
            self.last_error = None
            self.last_run_at = self._clock.now()
            self.last_duration_s = time.perf_counter() - started
            self._on_run("ok", self.last_duration_s, moved)
            return moved

    async def _sync_under_lease(self) -> int:
        if await self._lease.acquire() is None:
            log.debug("sync: another node holds the lease")
            return 0
        try:
            moved = await self._sync_pipelined()
        finally:
            await self._lease.release()
        if moved:
            log.info("sync: moved %d events into Redis", moved)
        return moved

    async def _move(self, page: PageT) -> int:
        """Redis first, then ``queued``; take back what changed meanwhile. How many moved."""
        events = page.events
        await self._near.schedule(events)
        changed = await self._far.mark_queued(page)
        if changed:
            by_id = {e.schedule_id: e for e in events}
            for schedule_id in changed:
                # Cancelled/rescheduled since read: take back the copy written here, and only
                # that one (a user's reschedule into Redis may have replaced it meanwhile).
                await self._near.discard(schedule_id, by_id[schedule_id])
        if self._on_moved is not None:
            taken_back = set(changed)
            self._on_moved([e for e in events if e.schedule_id not in taken_back])
        return len(events) - len(changed)

    async def _sync_pipelined(self) -> int:
        """Batch k+1 is read while batch k goes into Redis (and is marked ``queued``)."""
        far = self._far
        until = self._clock.now() + self._horizon
        moved = 0
        ahead: asyncio.Task[PageT] | None = asyncio.ensure_future(
            far.due_after(until, self._batch, None)
        )
        try:
            while ahead is not None:
                page = await ahead
                ahead = None
                if not page.events:
                    break
                if len(page.events) >= self._batch:
                    last = page.events[-1]
                    after = (last.scheduled_at, last.priority, last.schedule_id)
                    ahead = asyncio.ensure_future(far.due_after(until, self._batch, after))
                moved += await self._move(page)
                if ahead is not None and await self._lease.renew() is None:
                    log.warning("sync: lease lost mid-run; stopping (another node continues)")
                    break
        finally:
            if ahead is not None:  # an error or a lost lease: the read ahead is not needed
                ahead.cancel()
                await asyncio.gather(ahead, return_exceptions=True)
        return moved

    async def cleanup_once(self) -> int:
        """Remove schedules finished before the retention window and Redis orphans."""
        removed = await self._far.cleanup(self._clock.now() - self._retention)
        return removed + await self._near.remove_orphans()

    def stats(self) -> dict[str, Any]:
        """Runs, totals, the last run and the lag since it."""
        lag = None
        if self.last_run_at is not None:
            lag = (self._clock.now() - self.last_run_at).total_seconds()
        return {
            "runs": self.runs,
            "moved_total": self.moved_total,
            "last_moved": self.last_moved,
            "last_run_at": self.last_run_at.isoformat() if self.last_run_at else None,
            "last_duration_seconds": self.last_duration_s,
            "lag_seconds": lag,
            "last_error": self.last_error,
        }

    async def run_periodically(
        self, interval: float, cleanup_interval: float, stop: asyncio.Event
    ) -> None:
        """Sync every ``interval`` s and clean up every ``cleanup_interval`` s until ``stop``."""
        last_cleanup = time.monotonic()
        while not stop.is_set():
            try:
                await self.sync_once()
            except Exception as exc:
                log.warning("sync failed: %s", exc)
            if time.monotonic() - last_cleanup >= cleanup_interval:
                last_cleanup = time.monotonic()
                try:
                    await self.cleanup_once()
                except Exception as exc:
                    log.warning("cleanup failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

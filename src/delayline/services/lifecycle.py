"""The lifecycle history: every transition of every event, recorded off the firing path.

``LifecycleRecorder`` is the :class:`~delayline.ports.LifecycleSink` of the scheduler, the sync
and the dispatcher: ``transition()`` appends to a thread-safe buffer, and a task on the main
loop writes the buffer to ``event_lifecycle`` in batches (``ANALYTICS_BATCH_SIZE`` /
``ANALYTICS_FLUSH_INTERVAL``), like the analytics results. ``LifecycleService`` reads
histories and records back, including what this process has not written yet, so a node sees
its own transitions at once; other nodes' appear within a flush interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from delayline.domain.events import ScheduledEvent, to_epoch_us
from delayline.domain.outcomes import (
    EventFilter,
    EventRecord,
    LifecycleEntry,
    Transition,
    fold_history,
)
from delayline.ports import LifecycleStore
from delayline.services.analytics import BatchRecorder


class LifecycleRecorder(BatchRecorder[LifecycleEntry]):
    """Buffers transitions from any thread; writes them in batches from the main loop."""

    name = "lifecycle"

    def __init__(self, store: LifecycleStore, **options: Any) -> None:
        super().__init__(store.write_entries, **options)

    def transition(self, entry: LifecycleEntry) -> None:
        """Take one transition (never blocks, never raises)."""
        self.record(entry)


class LifecycleService:
    """Histories and records of events, from the store and this process's unwritten buffer."""

    def __init__(self, store: LifecycleStore, recorder: LifecycleRecorder) -> None:
        self._store = store
        self.recorder = recorder

    def transition(self, entry: LifecycleEntry) -> None:
        """Record one transition (see :class:`LifecycleRecorder`)."""
        self.recorder.transition(entry)

    def moved(self, events: Sequence[ScheduledEvent], at: datetime, node: str) -> None:
        """Record that the sync moved ``events`` from ClickHouse into Redis at ``at``."""
        for event in events:
            self.recorder.transition(
                LifecycleEntry(event.schedule_id, Transition.MOVED, at, event, node)
            )

    async def history(self, schedule_id: str) -> list[LifecycleEntry]:
        """Every transition of the event, oldest first.

        The buffer is read before the store: an entry written in between is in both and
        counted once; read the other way round it could be in neither.
        """
        waiting = [e for e in self.recorder.snapshot() if e.schedule_id == schedule_id]
        stored = await self._store.history(schedule_id)
        seen = {_identity(e) for e in stored}
        merged = stored + [e for e in waiting if _identity(e) not in seen]
        return sorted(merged, key=lambda e: e.at)

    async def record(self, schedule_id: str) -> EventRecord | None:
        """The event as its history adds up (None if nothing with its fields was recorded)."""
        return fold_history(await self.history(schedule_id))

    async def records(self, ids: Sequence[str]) -> dict[str, EventRecord]:
        """The record of each of ``ids`` that has a history (one read for all)."""
        wanted = set(ids)
        waiting = [e for e in self.recorder.snapshot() if e.schedule_id in wanted]
        stored = await self._store.histories(ids)
        out: dict[str, EventRecord] = {}
        for schedule_id in ids:
            entries = stored.get(schedule_id, [])
            seen = {_identity(e) for e in entries}
            entries += [
                e for e in waiting if e.schedule_id == schedule_id and _identity(e) not in seen
            ]
            record = fold_history(entries)
            if record is not None:
                out[schedule_id] = record
        return out

    async def find(self, match: EventFilter, *, after: str = "", limit: int = 100) -> list[str]:
        """Ids of events matching ``match`` (written transitions only), in id order."""
        return await self._store.find(match, after=after, limit=limit)

    async def start(self) -> None:
        """Start writing in the background."""
        await self.recorder.start()

    async def close(self) -> None:
        """Stop the writer, writing what is left."""
        await self.recorder.stop()


def _identity(entry: LifecycleEntry) -> tuple[str, str, int, str]:
    return (entry.transition.value, entry.node, to_epoch_us(entry.at), entry.detail)

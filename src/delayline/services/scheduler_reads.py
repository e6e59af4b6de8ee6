"""The reads of :class:`~delayline.services.scheduler.SchedulerService`: an event at any stage,
its history, events by filter, the tiers' stats, and the sync run on demand."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from delayline.domain.event_status import total_counts
from delayline.domain.events import EventStatus, ScheduledEvent, from_epoch_us
from delayline.domain.outcomes import EventFilter, LifecycleEntry
from delayline.services.scheduler_core import SchedulerCore


class LifecycleReads(SchedulerCore):
    """What is known of events across both tiers and the lifecycle history."""

    async def get_event(self, schedule_id: str) -> ScheduledEvent | None:
        """The whole event at any stage: waiting in a tier, or (from its lifecycle history)
        fired, failed, skipped or cancelled, with when and where it was delivered.

        A tier's own state wins over the history, which may lag by a flush interval when
        another node made the change.
        """
        near = await self._near.get(schedule_id)
        if near is not None and near.topic:  # pending or claimed in Redis
            return near
        far = await self._far.get(schedule_id) if self._far is not None else None
        if far is not None and far.status is EventStatus.PENDING:
            return far
        record = await self._lifecycle.record(schedule_id) if self._lifecycle else None
        base: ScheduledEvent | None = record or far
        if base is None:
            return near  # an outcome Redis remembers, nothing else known (or None)
        final = near if near is not None else far
        if final is not None and final.status.is_terminal and not base.status.is_terminal:
            base = replace(
                base,
                status=final.status,
                updated_at=final.updated_at,
                last_error=final.last_error or base.last_error,
            )
        return base

    async def get_history(self, schedule_id: str) -> list[LifecycleEntry]:
        """Every recorded transition of the event, oldest first (empty without a history)."""
        return await self._lifecycle.history(schedule_id) if self._lifecycle else []

    async def find_events(
        self, match: EventFilter, *, after: str = "", limit: int = 100
    ) -> list[ScheduledEvent]:
        """Events matching ``match`` in either tier (from the lifecycle history, so an event
        shows up within a flush interval of being scheduled), in id order after ``after``."""
        if self._lifecycle is None:
            return []
        ids = await self._lifecycle.find(match, after=after, limit=limit)
        records = await self._lifecycle.records(ids)
        found: list[ScheduledEvent] = []
        for schedule_id in ids:
            record = records.get(schedule_id)
            if record is None:
                continue
            if record.status.is_terminal:
                found.append(record)
                continue
            # Waiting: Redis knows best whether it is claimed (or just ended on another node).
            near = await self._near.get(schedule_id)
            if near is not None and near.topic:
                found.append(near)
            elif near is not None and near.status.is_terminal:
                found.append(replace(record, status=near.status, updated_at=near.updated_at))
            else:
                found.append(record)
        return found

    async def get_stats(self) -> dict[str, Any]:
        """Pending per tier, per-status counts and the next due time in each tier; with several
        shards, pending and processing per shard too."""
        shards = await self._near.shard_counts()
        counts = total_counts(shards)
        next_due = await self._near.next_due_us()
        stats: dict[str, Any] = {
            "redis_pending": counts["pending"],
            "redis_processing": counts["processing"],
            "redis_next_due_at": from_epoch_us(next_due).isoformat() if next_due else None,
            "redis_status_totals": {
                k: v for k, v in counts.items() if k not in {"pending", "processing"}
            },
            "clickhouse_pending": 0,
        }
        if len(shards) > 1:
            stats["redis_shards"] = [
                {"shard": k, "pending": c["pending"], "processing": c["processing"]}
                for k, c in enumerate(shards)
            ]
        if self._far is not None:
            far_counts = await self._far.counts()
            far_next = await self._far.next_due()
            stats["clickhouse_pending"] = far_counts.get("pending", 0)
            stats["clickhouse_status_counts"] = far_counts
            stats["clickhouse_next_due_at"] = far_next.isoformat() if far_next else None
        if self._sync is not None:
            stats["sync"] = self._sync.stats()
        stats["pending"] = stats["redis_pending"] + stats["clickhouse_pending"]
        return stats

    async def sync_clickhouse_to_redis(self) -> int:
        """Run the ClickHouse → Redis sync now; returns how many events moved."""
        return await self._sync.sync_once() if self._sync else 0

    async def cleanup_old_schedules(self) -> int:
        """Run the cleanup now; returns how many schedules or keys were removed."""
        return await self._sync.cleanup_once() if self._sync else 0

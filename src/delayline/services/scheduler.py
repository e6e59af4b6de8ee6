"""The hybrid scheduler service: one API over both tiers (behind ``scheduler_service``).

:class:`SchedulerService` is put together from :mod:`.scheduler_core` (state, one event's cancel
and reschedule), :mod:`.scheduler_upsert` (replace-upsert) and :mod:`.scheduler_reads` (reads);
this module adds scheduling new events and the by-key bulk operations."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from delayline.domain.events import EventStatus, ScheduledEvent, validate_scheduled_at
from delayline.domain.outcomes import EventFilter, Transition
from delayline.domain.routing import Tier, route
from delayline.errors import ErrorClass, classify
from delayline.services.revisions import content_revision, kafka_revision
from delayline.services.scheduler_core import SOURCE_LABELS, ScheduledHook
from delayline.services.scheduler_reads import LifecycleReads
from delayline.services.scheduler_upsert import UpsertPath

__all__ = ["ScheduledHook", "SchedulerService", "content_revision", "kafka_revision"]

log = logging.getLogger(__name__)


class SchedulerService(UpsertPath, LifecycleReads):
    """Routes events to Redis (due within the immediate horizon) or ClickHouse (later)."""

    async def schedule_event(
        self,
        *,
        topic: str,
        entity_type: str = "",
        action: str = "",
        body: Any = "",
        scheduled_at: datetime | str | None = None,
        correlation_id: str | None = None,
        headers: dict[str, str] | None = None,
        priority: int = 0,
        max_delay_seconds: int | None = None,
        schedule_id: str | None = None,
        delay_seconds: float | None = None,
    ) -> str:
        """Schedule one event; returns its schedule_id (the same id twice is one event)."""
        event = self.build_event(
            topic=topic,
            entity_type=entity_type,
            action=action,
            body=body,
            scheduled_at=scheduled_at,
            delay_seconds=delay_seconds,
            correlation_id=correlation_id,
            headers=headers,
            priority=priority,
            max_delay_seconds=max_delay_seconds,
            schedule_id=schedule_id,
        )
        await self.schedule_events([event])
        return event.schedule_id

    async def schedule_events(
        self, events: Sequence[ScheduledEvent], source: str = "api"
    ) -> list[bool]:
        """Store validated events in their tiers; True where new, False where the id exists
        (in either tier, or remembered after its outcome): then nothing changes. Durable on
        return."""
        now = self._clock.now()  # one instant for the whole batch
        tiers = [self.tier_for(e, now) for e in events]
        near = [e for e, t in zip(events, tiers, strict=True) if t is Tier.REDIS]
        far = [e for e, t in zip(events, tiers, strict=True) if t is Tier.CLICKHOUSE]
        elsewhere: set[str] = set()  # ids the other tier holds
        if self._far is not None:
            if near:
                elsewhere |= await self._known_far([e.schedule_id for e in near])
            if far:
                elsewhere |= await self._near.known([e.schedule_id for e in far])
        near = [e for e in near if e.schedule_id not in elsewhere]
        far = [e for e in far if e.schedule_id not in elsewhere]
        near_new = iter(await self._near.schedule(near) if near else [])
        far_new = iter(await self._far.insert(far) if far and self._far else [])
        inserted = [
            False
            if e.schedule_id in elsewhere
            else next(near_new)
            if t is Tier.REDIS
            else next(far_new)
            for e, t in zip(events, tiers, strict=True)
        ]
        label = SOURCE_LABELS.get(source, source)
        for event, new in zip(events, inserted, strict=True):
            if new:
                self._transition(event.schedule_id, Transition.SCHEDULED, event, label)
        if self._on_scheduled is not None:
            for tier, group in ((Tier.REDIS, near), (Tier.CLICKHOUSE, far)):
                if group:
                    self._on_scheduled(tier, source, len(group))
        return inserted

    async def _known_far(self, ids: Sequence[str]) -> set[str]:
        """The ids the long-term tier holds; none while it is unavailable, so that near-term
        scheduling goes on without it (an id stored only there may then be stored twice)."""
        assert self._far is not None
        try:
            return await self._far.known(ids)
        except Exception as exc:
            if classify(exc) is not ErrorClass.UNAVAILABLE:
                raise
            log.warning("long-term tier unavailable; ids not checked there: %s", exc)
            return set()

    async def schedule_bulk(self, items: Sequence[dict[str, Any]]) -> list[str]:
        """Validate and schedule many events in one call; returns their ids in order."""
        events = [self.build_event(**item) for item in items]
        await self.schedule_events(events)
        return [e.schedule_id for e in events]

    async def cancel_by_key(self, correlation_id: str) -> dict[str, int]:
        """Cancel every pending event with ``correlation_id``; how many in each tier."""
        return await self._by_key(correlation_id, None)

    async def reschedule_by_key(
        self, correlation_id: str, scheduled_at: datetime | str
    ) -> dict[str, int]:
        """Move every pending event with ``correlation_id`` to ``scheduled_at``; how many
        were in each tier before the move."""
        return await self._by_key(correlation_id, validate_scheduled_at(scheduled_at))

    async def _by_key(self, correlation_id: str, when: datetime | None) -> dict[str, int]:
        """Cancel (``when`` None) or reschedule the live events with ``correlation_id``, a page
        of ids at a time in id order (each page moves past the last, so an event changed here
        is not met again)."""
        counts = {Tier.REDIS.value: 0, Tier.CLICKHOUSE.value: 0}
        if self._lifecycle is None:
            return counts
        match = EventFilter(correlation_id=correlation_id, statuses=_LIVE_STATUSES)
        after = ""
        while ids := await self._lifecycle.find(match, after=after, limit=_BY_KEY_PAGE):
            after = ids[-1]
            if when is None:
                done = await self._cancel_many(ids)
            else:
                done = await self._reschedule_many(ids, when)
            for tier, n in done.items():
                counts[tier.value] += n
            if len(ids) < _BY_KEY_PAGE:
                break
        return counts

    async def _cancel_many(self, ids: Sequence[str]) -> dict[Tier, int]:
        """:meth:`cancel_event` for many: ClickHouse first in one write (as for one event),
        then Redis in one round trip. An event that was in Redis (queued there by the sync,
        too) counts there; a queued one whose Redis copy is being fired is not cancelled (it
        is published)."""
        was = await self._far.cancel_many(ids) if self._far is not None else {}
        in_near = await self._near.cancel_many(ids)
        counts = {Tier.REDIS: 0, Tier.CLICKHOUSE: 0}
        for schedule_id, near in zip(ids, in_near, strict=True):
            if near or was.get(schedule_id) is EventStatus.PENDING:
                counts[Tier.REDIS if near else Tier.CLICKHOUSE] += 1
                self._transition(schedule_id, Transition.CANCELLED)
        return counts

    async def _reschedule_many(self, ids: Sequence[str], when: datetime) -> dict[Tier, int]:
        """:meth:`reschedule_event` for many; how many moved from each tier. Events waiting in
        Redis move one by one; those only in ClickHouse, when they stay there, move in one
        read and one write (then any copy a concurrent sync put in Redis is taken back)."""
        counts = {Tier.REDIS: 0, Tier.CLICKHOUSE: 0}
        far_ids: list[str] = []
        for schedule_id in ids:
            near = await self._near.get(schedule_id)
            if near is not None and near.topic:
                counts[Tier.REDIS] += await self.reschedule_event(schedule_id, when)
            else:
                far_ids.append(schedule_id)
        if not far_ids or self._far is None:
            return counts
        if route(when, self._clock.now(), self._horizon) is not Tier.CLICKHOUSE:
            for schedule_id in far_ids:  # due soon now: each goes into Redis
                counts[Tier.CLICKHOUSE] += await self.reschedule_event(schedule_id, when)
            return counts
        moved = await self._far.reschedule_many(far_ids, when)
        for schedule_id, event in moved.items():
            await self._near.discard(schedule_id)
            counts[Tier.CLICKHOUSE] += 1
            self._transition(schedule_id, Transition.RESCHEDULED, event)
        return counts


_LIVE_STATUSES = frozenset({EventStatus.PENDING, EventStatus.QUEUED, EventStatus.PROCESSING})
_BY_KEY_PAGE = 1000

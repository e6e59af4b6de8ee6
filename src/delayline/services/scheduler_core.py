"""The state and single-event lifecycle of :class:`~delayline.services.scheduler.SchedulerService`:
its tiers and rules, building and routing an event, and cancelling or rescheduling one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from delayline.domain.codec import check_opened
from delayline.domain.events import (
    DEFAULT_EVENT_RULES,
    EventRules,
    EventStatus,
    InvalidEventError,
    ScheduledEvent,
    new_event,
    to_epoch_us,
    validate_scheduled_at,
)
from delayline.domain.limits import due_after
from delayline.domain.outcomes import LifecycleEntry, Transition
from delayline.domain.routing import Tier, route
from delayline.ports import Clock, LongTermStore, NearTermStore, SyncRunner
from delayline.services.lifecycle import LifecycleService

ScheduledHook = Callable[[Tier, str, int], None]
"""Called with (tier, source, count) after events are stored (metrics)."""

SOURCE_LABELS = {"api": "python"}
"""History labels of the ``source`` values that say less than they could."""


class SchedulerCore:
    """The scheduler's tiers and rules, and the operations on one event's lifecycle."""

    def __init__(
        self,
        near: NearTermStore,
        clock: Clock,
        *,
        immediate_horizon_seconds: float = 86400,
        max_body_bytes: int = 1024 * 1024,
        rules: EventRules = DEFAULT_EVENT_RULES,
        default_max_delay_seconds: int = 86400,
        far: LongTermStore[Any] | None = None,
        sync: SyncRunner | None = None,
        on_scheduled: ScheduledHook | None = None,
        lifecycle: LifecycleService | None = None,
    ) -> None:
        self._near = near
        self._far = far
        self._sync = sync
        self._clock = clock
        self._horizon = immediate_horizon_seconds
        self._max_body_bytes = max_body_bytes
        self._rules = rules
        self._default_max_delay = default_max_delay_seconds
        self._on_scheduled = on_scheduled
        self._lifecycle = lifecycle

    @property
    def near(self) -> NearTermStore:
        """The Redis tier."""
        return self._near

    @property
    def far(self) -> LongTermStore[Any] | None:
        """The ClickHouse tier, when configured."""
        return self._far

    def build_event(self, **fields: Any) -> ScheduledEvent:
        """Validate ``fields`` into an event (``InvalidEventError`` names a bad field).

        ``delay_seconds`` may stand in for ``scheduled_at``.
        """
        if "delay_seconds" in fields:
            delay = fields.pop("delay_seconds")
            if delay is not None:
                if fields.get("scheduled_at") is not None:
                    raise InvalidEventError("delay_seconds", "give scheduled_at or delay_seconds")
                fields["scheduled_at"] = _after(self._clock.now(), delay)
        if fields.get("max_delay_seconds") is None:
            fields["max_delay_seconds"] = self._default_max_delay
        return new_event(
            now=self._clock.now(), max_body_bytes=self._max_body_bytes, rules=self._rules, **fields
        )

    def tier_for(self, event: ScheduledEvent, now: datetime | None = None) -> Tier:
        """Where ``event`` waits at ``now`` (default: the clock's now); Redis when there is
        no long-term store."""
        if self._far is None:
            return Tier.REDIS
        return route(event.scheduled_at, now or self._clock.now(), self._horizon)

    async def cancel_event(self, schedule_id: str) -> bool:
        """Cancel a pending event in either tier; a cancelled event never fires. False when
        it is not pending: unknown, finished, or being fired (claimed: it is published).

        ClickHouse first, then Redis: if the sync is moving the event meanwhile, either the
        Redis copy is removed here or the sync sees the cancellation when it re-checks. A row
        the sync marked ``queued`` has its copy in Redis: that copy decides.
        """
        was = await self._far.cancel_live(schedule_id) if self._far is not None else None
        in_redis = await self._near.cancel(schedule_id)
        cancelled = in_redis or was is EventStatus.PENDING
        if cancelled:
            self._transition(schedule_id, Transition.CANCELLED)
        return cancelled

    def _transition(
        self,
        schedule_id: str,
        transition: Transition,
        event: ScheduledEvent | None = None,
        detail: str = "",
    ) -> None:
        if self._lifecycle is not None:
            entry = LifecycleEntry(schedule_id, transition, self._clock.now(), event, "", detail)
            self._lifecycle.transition(entry)

    async def reschedule_event(self, schedule_id: str, scheduled_at: datetime | str) -> bool:
        """Move a pending event to a new time, across tiers when the new time asks for it.
        False when it is not pending: unknown, finished, or being fired (claimed)."""
        when = validate_scheduled_at(scheduled_at)
        if not await self._reschedule(schedule_id, when):
            return False
        if self._lifecycle is not None:
            moved = await self._near.get(schedule_id)
            if (moved is None or not moved.topic) and self._far is not None:
                moved = await self._far.get(schedule_id)
            self._transition(schedule_id, Transition.RESCHEDULED, moved)
        return True

    async def _reschedule(self, schedule_id: str, when: datetime) -> bool:
        event = await self._near.get(schedule_id)
        if event is not None and event.status is EventStatus.PROCESSING:
            return False  # being fired: it is published at its time, never moved halfway
        if event is not None and not event.status.is_terminal:
            return await self._reschedule_near(event, when)
        if self._far is None:
            return False
        stored = await self._far.get(schedule_id)
        if stored is None or stored.status.is_terminal:
            return False
        if route(when, self._clock.now(), self._horizon) is Tier.CLICKHOUSE:
            if not await self._far.reschedule(schedule_id, when):
                return False
            # A sync that read the old version may have put a copy in Redis: take it back.
            await self._near.discard(schedule_id)
            return True
        # Due soon now: retire the ClickHouse row, then put the event into Redis at its new
        # time. A sync that read the old row may have put a copy there first: move that copy
        # (the sync takes back only the exact copy it wrote, so a moved one stays).
        check_opened(stored)
        moved = replace(stored, scheduled_at=when)
        if not await self._far.cancel(schedule_id):
            return False
        if (await self._near.schedule([moved]))[0]:
            return True
        return await self._near.reschedule(schedule_id, to_epoch_us(when))

    async def _reschedule_near(self, event: ScheduledEvent, when: datetime) -> bool:
        if self._far is None or self.tier_for(replace(event, scheduled_at=when)) is Tier.REDIS:
            return await self._near.reschedule(event.schedule_id, to_epoch_us(when))
        # Now due far away: store in ClickHouse first, then drop the Redis copy. An older
        # row may exist there (queued by the sync, or cancelled when the event moved to
        # Redis): the new version replaces it.
        check_opened(event)
        moved = replace(event, scheduled_at=when)
        await self._far.upsert([moved])
        if await self._near.discard(event.schedule_id):
            return True
        await self._far.cancel(event.schedule_id)  # it started firing: keep the Redis one
        return False


def _after(now: datetime, delay: object) -> datetime:
    try:
        return due_after(now, delay)
    except ValueError as exc:
        raise InvalidEventError("delay_seconds", str(exc)) from None

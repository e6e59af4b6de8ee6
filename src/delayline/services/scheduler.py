"""The hybrid scheduler service: one API over both tiers (behind ``scheduler_service``)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import orjson

from delayline.domain.codec import check_opened
from delayline.domain.events import (
    DEFAULT_EVENT_RULES,
    EventRules,
    EventStatus,
    InvalidEventError,
    ScheduledEvent,
    from_epoch_us,
    new_event,
    to_epoch_us,
    validate_scheduled_at,
)
from delayline.domain.limits import due_after
from delayline.domain.outcomes import EventFilter, LifecycleEntry, Transition
from delayline.domain.routing import Tier, route
from delayline.errors import ErrorClass, classify
from delayline.ports import Clock, LongTermStore, NearTermStore, SyncRunner, Upserted
from delayline.services.lifecycle import LifecycleService

log = logging.getLogger(__name__)


ScheduledHook = Callable[[Tier, str, int], None]
"""Called with (tier, source, count) after events are stored (metrics)."""

_NEAR_CODES = {
    1: Upserted.CREATED,
    2: Upserted.REPLACED,
    3: Upserted.AFTER_FIRING,
    4: Upserted.SCHEDULED_AGAIN,
}


def _upserted(near_code: int, far_code: int | None, was_far: bool) -> Upserted:
    """The outcome of one upsert from the Redis script's code, the ClickHouse code (None: the
    event is due in Redis) and whether a live ClickHouse version was retired for it."""
    if near_code == 0 or far_code == 0:
        return Upserted.UNCHANGED
    if far_code is None:
        return Upserted.REPLACED if was_far else _NEAR_CODES[near_code]
    if near_code == 4:  # fired from Redis, now due in ClickHouse
        return Upserted.SCHEDULED_AGAIN
    return Upserted.CREATED if near_code == 1 and far_code == 1 else Upserted.REPLACED


def kafka_revision(
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]],
) -> str:
    """The revision of a version that came from a delayed-topic message: its position and a
    hash of its key, value and headers. The same message again (a redelivery, or a producer
    sending it twice) has the same hash; of two messages in one partition, the earlier offset
    with a timestamp no later is older (a topic re-created from offset 0 has later ones)."""
    digest = hashlib.blake2b(digest_size=8)
    for part in (key, value, *(x for name, data in headers for x in (name.encode(), data))):
        digest.update(b"-" if part is None else b"%d:" % len(part) + part)
    return f"{partition}:{offset}:{timestamp_ms or 0}#{digest.hexdigest()}"


def content_revision(event: ScheduledEvent) -> str:
    """The revision of a version given over HTTP or Python: a hash of what it would publish
    and when, so the same version sent twice is one version."""
    body = event.body
    raw = body.encode() if isinstance(body, str) else bytes(body)
    meta = orjson.dumps(
        [
            event.topic,
            event.entity_type,
            event.action,
            event.correlation_id,
            sorted(event.headers.items()),
            event.due_us,
            event.priority,
            event.max_delay_seconds,
        ]
    )
    return "#" + hashlib.blake2b(meta + b"\n" + raw, digest_size=8).hexdigest()


class SchedulerService:
    """Routes events to Redis (due within the immediate horizon) or ClickHouse (later)."""

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
        label = _SOURCE_LABELS.get(source, source)
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

    async def upsert_events(
        self, events: Sequence[ScheduledEvent], revisions: Sequence[str], source: str = "api"
    ) -> list[Upserted]:
        """Store each event as the current version of its id, in its tier, durably on return.

        A version whose revision is not newer than the stored or remembered one changes
        nothing (``UNCHANGED``); else it replaces the pending version in whichever tier,
        schedules the id again after a cancel or an outcome, or — the id is being fired
        right now — waits and is scheduled when that firing ends (``AFTER_FIRING``: the
        version being fired is published too). Within one call the last version of an id
        wins; the earlier ones are ``REPLACED``.

        Order across tiers: the tier the event goes to is written first, then the other
        tier's older copy is retired, so a failure between the two loses nothing (a retry,
        or the sync's compare-and-discard, settles it). With a long-term tier configured an
        upsert needs it even for a near event (an older version may wait there): while it is
        unavailable this raises, and the Kafka consumer pauses until it is back.
        """
        now = self._clock.now()
        last = {e.schedule_id: i for i, e in enumerate(events)}
        near_at = {i for i, e in enumerate(events) if self.tier_for(e, now) is Tier.REDIS}
        far_at = [i for i in range(len(events)) if i not in near_at]
        far_codes: dict[int, int] = {}
        if far_at and self._far is not None:
            codes = await self._far.upsert([events[i] for i in far_at])
            far_codes = dict(zip(far_at, codes, strict=True))
        items = [(e, revisions[i], i in near_at) for i, e in enumerate(events)]
        near_codes = await self._near.upsert(items)
        moved: set[str] = set()  # ids whose far version was replaced by a near one
        if self._far is not None:
            ends_near = [
                events[i].schedule_id for i in sorted(near_at) if last[events[i].schedule_id] == i
            ]
            if ends_near:
                moved = await self._far.supersede(ends_near)
            stale = [i for i in far_at if near_codes[i] == 0 and far_codes[i] != 0]
            for i in stale:  # Redis holds this version or a newer one: keep only that
                await self._far.cancel(events[i].schedule_id)
        out = [
            _upserted(near_codes[i], far_codes.get(i), e.schedule_id in moved)
            for i, e in enumerate(events)
        ]
        label = _SOURCE_LABELS.get(source, source)
        for event, done in zip(events, out, strict=True):
            if done is Upserted.UNCHANGED:
                continue
            # The history's snapshot is this version; the detail says how it came.
            how = label if done is Upserted.CREATED else f"{label}; {done.value}"
            self._transition(event.schedule_id, Transition.SCHEDULED, event, how)
        if self._on_scheduled is not None:
            for tier, group in ((Tier.REDIS, near_at), (Tier.CLICKHOUSE, set(far_at))):
                stored = sum(1 for i in group if out[i] is not Upserted.UNCHANGED)
                if stored:
                    self._on_scheduled(tier, source, stored)
        return out

    async def replace(self, event: ScheduledEvent, source: str = "api") -> Upserted:
        """Replace whatever state ``event``'s id is in: pending (either tier), cancelled or
        fired (scheduled again), being fired (scheduled after). The same version again
        (same content and time) is ``UNCHANGED``, so retrying a replace is safe."""
        return (await self.upsert_events([event], [content_revision(event)], source))[0]

    async def replace_event(self, *, schedule_id: str, **fields: Any) -> Upserted:
        """:meth:`replace` with the fields of :meth:`schedule_event` (``schedule_id`` is
        required): the Python API's way to schedule an id again on purpose."""
        return await self.replace(self.build_event(schedule_id=schedule_id, **fields))

    async def schedule_bulk(self, items: Sequence[dict[str, Any]]) -> list[str]:
        """Validate and schedule many events in one call; returns their ids in order."""
        events = [self.build_event(**item) for item in items]
        await self.schedule_events(events)
        return [e.schedule_id for e in events]

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

    async def get_stats(self) -> dict[str, Any]:
        """Pending per tier, per-status counts and the next due time in each tier."""
        counts = await self._near.counts()
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


_SOURCE_LABELS = {"api": "python"}
"""History labels of the ``source`` values that say less than they could."""
_LIVE_STATUSES = frozenset({EventStatus.PENDING, EventStatus.QUEUED, EventStatus.PROCESSING})
_BY_KEY_PAGE = 1000


def _after(now: datetime, delay: object) -> datetime:
    try:
        return due_after(now, delay)
    except ValueError as exc:
        raise InvalidEventError("delay_seconds", str(exc)) from None

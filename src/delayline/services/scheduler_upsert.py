"""The replace-upsert path of :class:`~delayline.services.scheduler.SchedulerService`: store
each event as the current version of its id, whatever state that id is in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from delayline.domain.events import ScheduledEvent
from delayline.domain.outcomes import Transition
from delayline.domain.routing import Tier
from delayline.ports import Upserted
from delayline.services.revisions import content_revision
from delayline.services.scheduler_core import SOURCE_LABELS, SchedulerCore

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


class UpsertPath(SchedulerCore):
    """Upserts and replaces across both tiers."""

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
        label = SOURCE_LABELS.get(source, source)
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

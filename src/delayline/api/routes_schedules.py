"""Scheduling over HTTP: create (one or a batch), read, cancel and reschedule events."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, params

from delayline.api.schemas import (
    ApiError,
    BatchIn,
    BatchResult,
    ByKeyResult,
    Cancelled,
    ErrorOut,
    EventIn,
    EventOut,
    EventPage,
    HistoryOut,
    PutRequest,
    Replaced,
    Rescheduled,
    RescheduleIn,
    ScheduleRequest,
    ScheduleResult,
    TransitionOut,
    to_utc,
)
from delayline.domain.events import EventStatus, InvalidEventError, ScheduledEvent, utc_now
from delayline.domain.limits import SCHEDULE_ID_PATTERN, due_after
from delayline.domain.outcomes import EventFilter
from delayline.errors import OutcomeUnknown
from delayline.ports import SchedulerApi

PREFIX = "/api/v1/schedules"
MAX_PAGE = 1000
_ID_RE = re.compile(SCHEDULE_ID_PATTERN)
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 404, 408, 409, 413, 422, 503, 504, 507)
}


def build_event(
    service: SchedulerApi, item: EventIn, now: datetime, field_prefix: str = ""
) -> ScheduledEvent:
    """Validate ``item`` into an event through ``service`` (``ApiError`` 422 naming the field)."""
    fields = item.model_dump(exclude_none=True, exclude={"delay_seconds"})
    if item.delay_seconds is not None:
        fields["scheduled_at"] = _due_after(now, item.delay_seconds, field_prefix)
    try:
        return service.build_event(**fields)
    except InvalidEventError as exc:
        raise ApiError(422, str(exc), field=field_prefix + exc.field) from None


def _utc(name: str, value: datetime | None) -> datetime | None:
    try:
        return to_utc(value) if value is not None else None
    except ValueError as exc:
        raise ApiError(422, f"{name}: {exc}", field=name) from None


def _due_after(now: datetime, delay_seconds: float, field_prefix: str = "") -> datetime:
    try:
        return due_after(now, delay_seconds)
    except ValueError as exc:
        field = field_prefix + "delay_seconds"
        raise ApiError(422, f"{field}: {exc}", field=field) from None


def _due_time(change: RescheduleIn) -> datetime:
    if change.delay_seconds is not None:
        return _due_after(utc_now(), change.delay_seconds)
    assert change.scheduled_at is not None  # the model requires one of the two
    return change.scheduled_at


def _by_key(correlation_id: str, counts: dict[str, int]) -> ByKeyResult:
    redis, clickhouse = counts.get("redis", 0), counts.get("clickhouse", 0)
    return ByKeyResult(
        correlation_id=correlation_id, redis=redis, clickhouse=clickhouse, total=redis + clickhouse
    )


def _not_found(schedule_id: str) -> ApiError:
    return ApiError(404, f"no scheduled event with id {schedule_id[:200]!r}", field="schedule_id")


def schedules_router(service: SchedulerApi, auth: Sequence[params.Depends]) -> APIRouter:
    """The ``/api/v1/schedules`` routes, each behind ``auth``.

    Include it after the monitoring router: ``/{schedule_id}`` takes any path (ids may hold ``/``).
    """
    router = APIRouter(prefix=PREFIX, tags=["schedules"], dependencies=auth, responses=_ERRORS)

    @router.post("", status_code=201, summary="Schedule one event or a batch")
    async def schedule(
        request: Annotated[ScheduleRequest, Body()],
    ) -> ScheduleResult | BatchResult:
        """Store the event(s) durably, then answer 201. Scheduling an existing ``schedule_id``
        again creates nothing (``created: false``)."""
        now = utc_now()
        if isinstance(request, BatchIn):
            events = [
                build_event(service, item, now, f"events.{i}.")
                for i, item in enumerate(request.events)
            ]
        else:
            events = [build_event(service, request, now)]
        try:
            created = await service.schedule_events(events, source="http")
        except OutcomeUnknown as exc:
            exc.schedule_ids = [ev.schedule_id for ev in events]  # to retry with
            raise
        results = [
            ScheduleResult(schedule_id=ev.schedule_id, created=new, scheduled_at=ev.scheduled_at)
            for ev, new in zip(events, created, strict=True)
        ]
        if isinstance(request, BatchIn):
            return BatchResult(results=results, created=sum(created))
        return results[0]

    @router.get("", summary="Find events by business key, in either tier")
    async def list_schedules(
        correlation_id: str | None = None,
        entity_type: str | None = None,
        action: str | None = None,
        topic: str | None = None,
        status: Annotated[list[EventStatus] | None, Query()] = None,
        due_after: datetime | None = None,
        due_before: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        cursor: Annotated[str, Query(max_length=200)] = "",
    ) -> EventPage:
        """Matching events in id order, ``limit`` a page; ``next_cursor`` continues. Events
        appear within a flush interval of being scheduled (see the docs)."""
        match = EventFilter(
            correlation_id=correlation_id,
            entity_type=entity_type,
            action=action,
            topic=topic,
            statuses=frozenset(status or ()),
            due_after=_utc("due_after", due_after),
            due_before=_utc("due_before", due_before),
        )
        events = await service.find_events(match, after=cursor, limit=limit)
        page = [EventOut.model_validate(e.to_dict()) for e in events]
        more = len(page) == limit
        return EventPage(events=page, next_cursor=page[-1].schedule_id if more else None)

    @router.delete("", summary="Cancel every pending event with a correlation id")
    async def cancel_by_key(correlation_id: Annotated[str, Query(min_length=1)]) -> ByKeyResult:
        """Cancel them in both tiers; answers how many in each."""
        return _by_key(correlation_id, await service.cancel_by_key(correlation_id))

    @router.patch("", summary="Reschedule every pending event with a correlation id")
    async def reschedule_by_key(
        correlation_id: Annotated[str, Query(min_length=1)], change: RescheduleIn
    ) -> ByKeyResult:
        """Move them to the new due time; answers how many in each tier."""
        when = _due_time(change)
        return _by_key(correlation_id, await service.reschedule_by_key(correlation_id, when))

    @router.get("/{schedule_id:path}/history", summary="Every transition of an event")
    async def get_history(schedule_id: str) -> HistoryOut:
        """Scheduled, moved, claimed, published, retried, and how it ended; 404 if unknown."""
        entries = await service.get_history(schedule_id) if _ID_RE.fullmatch(schedule_id) else []
        if not entries:
            raise _not_found(schedule_id)
        transitions = [TransitionOut.model_validate(e.to_dict()) for e in entries]
        return HistoryOut(schedule_id=schedule_id, transitions=transitions)

    @router.get("/{schedule_id:path}", summary="Get a scheduled event and its status")
    async def get_schedule(schedule_id: str) -> EventOut:
        """The event, from whichever tier holds it, or 404."""
        event = await service.get_event(schedule_id) if _ID_RE.fullmatch(schedule_id) else None
        if event is None:
            raise _not_found(schedule_id)
        return EventOut.model_validate(event.to_dict())

    @router.delete("/{schedule_id:path}", summary="Cancel a pending event")
    async def cancel_schedule(schedule_id: str) -> Cancelled:
        """Cancel the event; 404 if unknown, 409 if it already fired or was cancelled."""
        if _ID_RE.fullmatch(schedule_id) and await service.cancel_event(schedule_id):
            return Cancelled(schedule_id=schedule_id)
        raise await _why_not(schedule_id, "cancelled")

    async def reschedule(schedule_id: str, change: RescheduleIn) -> Rescheduled:
        when = _due_time(change)
        if _ID_RE.fullmatch(schedule_id) and await service.reschedule_event(schedule_id, when):
            return Rescheduled(schedule_id=schedule_id, scheduled_at=when)
        raise await _why_not(schedule_id, "rescheduled")

    @router.put("/{schedule_id:path}", summary="Replace the event, or reschedule it")
    async def put_schedule(
        schedule_id: str, change: Annotated[PutRequest, Body()]
    ) -> Replaced | Rescheduled:
        """With a full event (a body with ``topic``): make it the id's current version,
        whatever state the id is in — pending in either tier (replaced), cancelled or fired
        (scheduled again), being fired (scheduled when that firing ends). Sending the same
        version again changes nothing (``unchanged``).

        With only ``scheduled_at`` or ``delay_seconds``: move the pending event, as PATCH;
        404 if unknown, 409 if it is no longer pending."""
        if isinstance(change, RescheduleIn):
            return await reschedule(schedule_id, change)
        if not _ID_RE.fullmatch(schedule_id):
            raise ApiError(422, f"{schedule_id[:200]!r} is not a valid schedule id",
                           field="schedule_id")  # fmt: skip
        if change.schedule_id not in (None, schedule_id):
            raise ApiError(422, "schedule_id in the body differs from the path",
                           field="schedule_id")  # fmt: skip
        event = build_event(service, change.model_copy(update={"schedule_id": schedule_id}),
                            utc_now())  # fmt: skip
        outcome = await service.replace(event, source="http")
        return Replaced(
            schedule_id=schedule_id, scheduled_at=event.scheduled_at, outcome=outcome.value
        )

    @router.patch("/{schedule_id:path}", summary="Reschedule a pending event")
    async def patch_schedule(schedule_id: str, change: RescheduleIn) -> Rescheduled:
        """Same as PUT: the due time is the only thing that can change."""
        return await reschedule(schedule_id, change)

    async def _why_not(schedule_id: str, verb: str) -> ApiError:
        event = await service.get_event(schedule_id) if _ID_RE.fullmatch(schedule_id) else None
        if event is None:
            return _not_found(schedule_id)
        return ApiError(
            409,
            f"event {schedule_id!r} is {event.status.value}; only pending events can be {verb}",
            field="schedule_id",
        )

    return router

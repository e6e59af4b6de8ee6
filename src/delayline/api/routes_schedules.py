"""Scheduling over HTTP: create (one or a batch), read, cancel and reschedule events."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, params

from delayline.api.schemas import (
    SCHEDULE_ID_PATTERN,
    ApiError,
    BatchIn,
    BatchResult,
    Cancelled,
    ErrorOut,
    EventIn,
    EventOut,
    PutRequest,
    Replaced,
    Rescheduled,
    RescheduleIn,
    ScheduleRequest,
    ScheduleResult,
)
from delayline.domain.events import InvalidEventError, ScheduledEvent, utc_now
from delayline.errors import OutcomeUnknown
from delayline.ports import SchedulerApi

PREFIX = "/api/v1/schedules"
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
        fields["scheduled_at"] = now + timedelta(seconds=item.delay_seconds)
    try:
        return service.build_event(**fields)
    except InvalidEventError as exc:
        raise ApiError(422, str(exc), field=field_prefix + exc.field) from None


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
        if change.delay_seconds is not None:
            when = utc_now() + timedelta(seconds=change.delay_seconds)
        else:
            assert change.scheduled_at is not None  # the model requires one of the two
            when = change.scheduled_at
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

"""Scheduling over HTTP: create (one or a batch), read, cancel and reschedule events.

Each route asks for its scope (``read`` or ``schedule``) and sees the caller's tenant only
(:class:`~delayline.api.tenants.TenantView`): another tenant's event answers 404, as an unknown
one does.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request

from delayline.api.audit_routes import AuditLog, audited
from delayline.api.auth import caller_of
from delayline.api.keys import Principal
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
from delayline.api.tenants import TenantView
from delayline.domain.events import (
    EventStatus,
    InvalidEventError,
    ScheduledEvent,
    new_schedule_id,
    utc_now,
)
from delayline.domain.limits import SCHEDULE_ID_PATTERN, due_after
from delayline.domain.outcomes import EventFilter
from delayline.errors import OutcomeUnknown
from delayline.ports import SchedulerApi

PREFIX = "/api/v1/schedules"
MAX_PAGE = 1000
_ID_RE = re.compile(SCHEDULE_ID_PATTERN)
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 403, 404, 408, 409, 413, 422, 503, 504, 507)
}
Caller = Callable[..., Awaitable[Principal]]


def build_event(
    service: SchedulerApi,
    item: EventIn,
    now: datetime,
    field_prefix: str = "",
    view: TenantView | None = None,
) -> ScheduledEvent:
    """Validate ``item`` into an event through ``service`` (``ApiError`` 422 naming the field),
    its ids in the stored form of ``view``'s tenant."""
    fields = item.model_dump(exclude_none=True, exclude={"delay_seconds"})
    if view is not None:
        given = item.schedule_id if item.schedule_id is not None else new_schedule_id()
        fields["schedule_id"] = view.new_id(given, field_prefix + "schedule_id")
        if item.correlation_id:
            key_field = field_prefix + "correlation_id"
            fields["correlation_id"] = view.new_key(item.correlation_id, key_field)
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


async def _search(
    service: SchedulerApi, view: TenantView, match: EventFilter, cursor: str, limit: int
) -> list[ScheduledEvent]:
    """Up to ``limit`` of the caller's events matching ``match`` in id order after its
    ``cursor``, jumping over other tenants' ranges of ids."""
    found: list[ScheduledEvent] = []
    after: str | None = view.search_start(cursor)
    while after is not None and len(found) < limit:
        batch = await service.find_events(match, after=after, limit=limit)
        resume: str | None = batch[-1].schedule_id if len(batch) == limit else None
        for event in batch:
            if view.sees(event.schedule_id):
                found.append(event)
                if len(found) == limit:
                    break
            else:
                resume = view.skip_past(event.schedule_id)
                if resume is not None and resume <= after:
                    resume = None  # already past that range: only foreign ids remain
                break
        after = resume
    return found


def schedules_router(
    service: SchedulerApi,
    *,
    reader: Caller,
    scheduler: Caller,
    audit: AuditLog | None = None,
) -> APIRouter:
    """The ``/api/v1/schedules`` routes: reads need ``reader``, changes ``scheduler``.

    Include it after the monitoring router: ``/{schedule_id}`` takes any path (ids may hold ``/``).
    """
    router = APIRouter(prefix=PREFIX, tags=["schedules"], responses=_ERRORS)
    reads = [Depends(reader)]
    changes = [Depends(scheduler)]

    @router.post("", status_code=201, summary="Schedule one event or a batch", dependencies=changes)
    async def schedule(
        http: Request, request: Annotated[ScheduleRequest, Body()]
    ) -> ScheduleResult | BatchResult:
        """Store the event(s) durably, then answer 201. Scheduling an existing ``schedule_id``
        again creates nothing (``created: false``)."""
        who = caller_of(http)
        now = utc_now()
        view = TenantView(who)
        if isinstance(request, BatchIn):
            events = [
                build_event(service, item, now, f"events.{i}.", view)
                for i, item in enumerate(request.events)
            ]
        else:
            events = [build_event(service, request, now, view=view)]
        try:
            created = await service.schedule_events(events, source="http")
        except OutcomeUnknown as exc:
            exc.schedule_ids = [view.shown(ev.schedule_id) for ev in events]  # to retry with
            raise
        results = [
            ScheduleResult(
                schedule_id=view.shown(ev.schedule_id), created=new, scheduled_at=ev.scheduled_at
            )
            for ev, new in zip(events, created, strict=True)
        ]
        if isinstance(request, BatchIn):
            return BatchResult(results=results, created=sum(created))
        return results[0]

    @router.get("", summary="Find events by business key, in either tier", dependencies=reads)
    async def list_schedules(
        request: Request,
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
        who = caller_of(request)
        view = TenantView(who)
        key = view.stored(correlation_id) if correlation_id is not None else None
        if correlation_id is not None and key is None:
            return EventPage(events=[], next_cursor=None)
        match = EventFilter(
            correlation_id=key,
            entity_type=entity_type,
            action=action,
            topic=topic,
            statuses=frozenset(status or ()),
            due_after=_utc("due_after", due_after),
            due_before=_utc("due_before", due_before),
        )
        events = await _search(service, view, match, cursor, limit)
        page = [EventOut.model_validate(view.shown_event(e)) for e in events]
        more = len(page) == limit
        return EventPage(events=page, next_cursor=page[-1].schedule_id if more else None)

    async def by_key(
        who: Principal, verb: str, correlation_id: str, when: datetime | None
    ) -> ByKeyResult:
        key = TenantView(who).stored(correlation_id)

        async def change() -> dict[str, int]:
            if key is None:
                return {}
            if when is None:
                return await service.cancel_by_key(key)
            return await service.reschedule_by_key(key, when)

        parameters: dict[str, Any] = {"correlation_id": correlation_id}
        if when is not None:
            parameters["scheduled_at"] = when.isoformat()
        counts = await audited(audit, who, f"{verb}-by-key", parameters, change)
        return _by_key(correlation_id, counts)

    @router.delete(
        "", summary="Cancel every pending event with a correlation id", dependencies=changes
    )
    async def cancel_by_key(
        request: Request, correlation_id: Annotated[str, Query(min_length=1)]
    ) -> ByKeyResult:
        """Cancel them in both tiers; answers how many in each."""
        who = caller_of(request)
        return await by_key(who, "cancel", correlation_id, None)

    @router.patch(
        "", summary="Reschedule every pending event with a correlation id", dependencies=changes
    )
    async def reschedule_by_key(
        request: Request, correlation_id: Annotated[str, Query(min_length=1)], change: RescheduleIn
    ) -> ByKeyResult:
        """Move them to the new due time; answers how many in each tier."""
        who = caller_of(request)
        return await by_key(who, "reschedule", correlation_id, _due_time(change))

    def stored_id(who: Principal, schedule_id: str) -> str | None:
        """The stored id the caller names, if it may name one (else: answer 404)."""
        if not _ID_RE.fullmatch(schedule_id):
            return None
        return TenantView(who).stored(schedule_id)

    @router.get(
        "/{schedule_id:path}/history", summary="Every transition of an event", dependencies=reads
    )
    async def get_history(request: Request, schedule_id: str) -> HistoryOut:
        """Scheduled, moved, claimed, published, retried, and how it ended; 404 if unknown."""
        who = caller_of(request)
        stored = stored_id(who, schedule_id)
        entries = await service.get_history(stored) if stored is not None else []
        if not entries:
            raise _not_found(schedule_id)
        transitions = [TransitionOut.model_validate(e.to_dict()) for e in entries]
        return HistoryOut(schedule_id=schedule_id, transitions=transitions)

    @router.get(
        "/{schedule_id:path}", summary="Get a scheduled event and its status", dependencies=reads
    )
    async def get_schedule(request: Request, schedule_id: str) -> EventOut:
        """The event, from whichever tier holds it, or 404."""
        who = caller_of(request)
        stored = stored_id(who, schedule_id)
        event = await service.get_event(stored) if stored is not None else None
        if event is None:
            raise _not_found(schedule_id)
        return EventOut.model_validate(TenantView(who).shown_event(event))

    @router.delete("/{schedule_id:path}", summary="Cancel a pending event", dependencies=changes)
    async def cancel_schedule(request: Request, schedule_id: str) -> Cancelled:
        """Cancel the event; 404 if unknown, 409 if it already fired or was cancelled."""
        who = caller_of(request)
        stored = stored_id(who, schedule_id)
        if stored is not None and await service.cancel_event(stored):
            return Cancelled(schedule_id=schedule_id)
        raise await _why_not(stored, schedule_id, "cancelled")

    async def reschedule(who: Principal, schedule_id: str, change: RescheduleIn) -> Rescheduled:
        when = _due_time(change)
        stored = stored_id(who, schedule_id)
        if stored is not None and await service.reschedule_event(stored, when):
            return Rescheduled(schedule_id=schedule_id, scheduled_at=when)
        raise await _why_not(stored, schedule_id, "rescheduled")

    @router.put(
        "/{schedule_id:path}", summary="Replace the event, or reschedule it", dependencies=changes
    )
    async def put_schedule(
        request: Request, schedule_id: str, change: Annotated[PutRequest, Body()]
    ) -> Replaced | Rescheduled:
        """With a full event (a body with ``topic``): make it the id's current version,
        whatever state the id is in — pending in either tier (replaced), cancelled or fired
        (scheduled again), being fired (scheduled when that firing ends). Sending the same
        version again changes nothing (``unchanged``).

        With only ``scheduled_at`` or ``delay_seconds``: move the pending event, as PATCH;
        404 if unknown, 409 if it is no longer pending."""
        who = caller_of(request)
        if isinstance(change, RescheduleIn):
            return await reschedule(who, schedule_id, change)
        if not _ID_RE.fullmatch(schedule_id):
            raise ApiError(422, f"{schedule_id[:200]!r} is not a valid schedule id",
                           field="schedule_id")  # fmt: skip
        if change.schedule_id not in (None, schedule_id):
            raise ApiError(422, "schedule_id in the body differs from the path",
                           field="schedule_id")  # fmt: skip
        event = build_event(service, change.model_copy(update={"schedule_id": schedule_id}),
                            utc_now(), view=TenantView(who))  # fmt: skip
        outcome = await service.replace(event, source="http")
        return Replaced(
            schedule_id=schedule_id, scheduled_at=event.scheduled_at, outcome=outcome.value
        )

    @router.patch("/{schedule_id:path}", summary="Reschedule a pending event", dependencies=changes)
    async def patch_schedule(
        request: Request, schedule_id: str, change: RescheduleIn
    ) -> Rescheduled:
        """Same as PUT: the due time is the only thing that can change."""
        who = caller_of(request)
        return await reschedule(who, schedule_id, change)

    async def _why_not(stored: str | None, schedule_id: str, verb: str) -> ApiError:
        event = await service.get_event(stored) if stored is not None else None
        if event is None:
            return _not_found(schedule_id)
        return ApiError(
            409,
            f"event {schedule_id!r} is {event.status.value}; only pending events can be {verb}",
            field="schedule_id",
        )

    return router

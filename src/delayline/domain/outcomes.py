"""What happened to an event: each attempt's result (analytics), each transition of its life
(the lifecycle history) and the record assembled from them. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from delayline.domain.events import EventStatus, ScheduledEvent, to_epoch_us


class Outcome(StrEnum):
    """The values of ``schedule_execution_results.status``: how one attempt ended."""

    SUCCESS = "success"
    ERROR = "error"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class Delivery:
    """The broker's delivery report for one published event."""

    acked_at: float
    """Wall time (epoch seconds) the report arrived."""
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    """One attempt's end: fired, failed for good, timed out, or skipped as too late."""

    execution_id: str
    event: ScheduledEvent
    executed_at: datetime
    outcome: Outcome
    error_message: str | None
    retry_count: int
    processing_time_ms: int
    node_id: str

    @property
    def delay_seconds(self) -> float:
        """Lateness: how long after its due time the event was executed."""
        return (to_epoch_us(self.executed_at) - self.event.due_us) / 1_000_000


class Transition(StrEnum):
    """One step of an event's life, as recorded in its history."""

    SCHEDULED = "scheduled"  # detail: the source (python, http, kafka)
    RESCHEDULED = "rescheduled"
    MOVED = "moved"  # by the sync, from ClickHouse into Redis
    CLAIMED = "claimed"  # detail: the lease (the start of its token)
    PUBLISHED = "published"  # with the Kafka partition and offset
    RETRIED = "retried"  # detail: the error
    COMPLETED = "completed"
    FAILED = "failed"  # detail: the error
    SKIPPED = "skipped"  # detail: the reason
    CANCELLED = "cancelled"


TRANSITION_STATUS: dict[Transition, EventStatus] = {
    Transition.SCHEDULED: EventStatus.PENDING,
    Transition.RESCHEDULED: EventStatus.PENDING,
    Transition.MOVED: EventStatus.QUEUED,
    Transition.CLAIMED: EventStatus.PROCESSING,
    Transition.PUBLISHED: EventStatus.PROCESSING,
    Transition.RETRIED: EventStatus.PENDING,
    Transition.COMPLETED: EventStatus.COMPLETED,
    Transition.FAILED: EventStatus.FAILED,
    Transition.SKIPPED: EventStatus.SKIPPED,
    Transition.CANCELLED: EventStatus.CANCELLED,
}
"""The status an event has right after each transition."""


@dataclass(frozen=True, slots=True)
class LifecycleEntry:
    """One transition of one event, with a snapshot of the event as it was then.

    ``event`` is ``None`` when the transition's writer did not have the event at hand (a
    cancel): the record then keeps the fields of the latest snapshot before it.
    """

    schedule_id: str
    transition: Transition
    at: datetime
    event: ScheduledEvent | None = None
    node: str = ""
    detail: str = ""
    partition: int | None = None
    offset: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view of the transition (without the snapshot)."""
        out: dict[str, Any] = {
            "transition": self.transition.value,
            "at": self.at.isoformat(),
            "node": self.node,
            "detail": self.detail,
        }
        if self.partition is not None:
            out["kafka_partition"] = self.partition
            out["kafka_offset"] = self.offset
        return out


@dataclass(frozen=True, slots=True)
class EventRecord(ScheduledEvent):
    """An event with what happened to it: once published, when, where and how late."""

    fired_at: datetime | None = None
    """When the broker's delivery report came in."""
    kafka_partition: int | None = None
    kafka_offset: int | None = None

    @property
    def lateness_seconds(self) -> float | None:
        """How long after its due time the event was delivered (None before)."""
        if self.fired_at is None:
            return None
        return (to_epoch_us(self.fired_at) - self.due_us) / 1_000_000

    def to_dict(self) -> dict[str, Any]:
        """The event's fields plus ``fired_at``, ``lateness_seconds``, partition and offset."""
        out = ScheduledEvent.to_dict(self)
        out["fired_at"] = self.fired_at.isoformat() if self.fired_at else None
        out["lateness_seconds"] = self.lateness_seconds
        out["kafka_partition"] = self.kafka_partition
        out["kafka_offset"] = self.kafka_offset
        return out


@dataclass(frozen=True, slots=True)
class EventFilter:
    """What a search by business key matches; ``None`` and empty fields match everything."""

    correlation_id: str | None = None
    entity_type: str | None = None
    action: str | None = None
    topic: str | None = None
    statuses: frozenset[EventStatus] = frozenset()
    due_after: datetime | None = None
    due_before: datetime | None = None


def fold_history(entries: Iterable[LifecycleEntry]) -> EventRecord | None:
    """The record an event's transitions add up to (None without any snapshot).

    Entries are taken in time order; at equal times a terminal transition wins. The fields
    come from the latest snapshot, the status from the latest transition, and once a
    transition is terminal nothing later changes the status.
    """
    ordered = sorted(entries, key=lambda e: (e.at, TRANSITION_STATUS[e.transition].is_terminal))
    snapshot: ScheduledEvent | None = None
    status: EventStatus | None = None
    updated_at: datetime | None = None
    last_error: str | None = None
    delivery: LifecycleEntry | None = None
    for entry in ordered:
        if status is not None and status.is_terminal:
            break
        if entry.event is not None:
            snapshot = entry.event
            last_error = entry.event.last_error or last_error
        status = TRANSITION_STATUS[entry.transition]
        updated_at = entry.at
        if entry.transition in (Transition.RETRIED, Transition.FAILED, Transition.SKIPPED):
            last_error = entry.detail or last_error
        if entry.transition is Transition.PUBLISHED:
            delivery = entry
    if snapshot is None or status is None or updated_at is None:
        return None
    base = {f: getattr(snapshot, f) for f in ScheduledEvent.__dataclass_fields__}
    base.update(status=status, updated_at=updated_at, last_error=last_error)
    record = EventRecord(**base)
    if delivery is not None:
        record = replace(
            record,
            fired_at=delivery.at,
            kafka_partition=delivery.partition,
            kafka_offset=delivery.offset,
        )
    return record

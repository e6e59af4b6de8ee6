"""An event's statuses and the transitions allowed between them. Pure: no I/O."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from enum import StrEnum


class EventStatus(StrEnum):
    """Where an event is in its life. The terminal ones never change again."""

    PENDING = "pending"  # accepted, waiting in a tier
    QUEUED = "queued"  # moved from ClickHouse into Redis by the sync
    PROCESSING = "processing"  # claimed by a dispatcher under a lease
    COMPLETED = "completed"  # published; the broker acknowledged it
    FAILED = "failed"  # publishing failed past the retry limit, or permanently
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # could first fire later than its max_delay_seconds

    @property
    def is_terminal(self) -> bool:
        """True for statuses an event never leaves."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {EventStatus.COMPLETED, EventStatus.FAILED, EventStatus.CANCELLED, EventStatus.SKIPPED}
)

ALLOWED_TRANSITIONS: Mapping[EventStatus, frozenset[EventStatus]] = {
    EventStatus.PENDING: frozenset(
        {EventStatus.QUEUED, EventStatus.PROCESSING, EventStatus.CANCELLED, EventStatus.SKIPPED}
    ),
    EventStatus.QUEUED: frozenset(
        {EventStatus.PROCESSING, EventStatus.CANCELLED, EventStatus.SKIPPED, EventStatus.PENDING}
    ),
    EventStatus.PROCESSING: frozenset(
        {
            EventStatus.COMPLETED,
            EventStatus.FAILED,
            EventStatus.SKIPPED,
            EventStatus.CANCELLED,
            EventStatus.PENDING,  # retry later, or a lease expired
            EventStatus.QUEUED,
        }
    ),
    EventStatus.COMPLETED: frozenset(),
    EventStatus.FAILED: frozenset(),
    EventStatus.CANCELLED: frozenset(),
    EventStatus.SKIPPED: frozenset(),
}


def can_transition(current: EventStatus, new: EventStatus) -> bool:
    """Whether an event in ``current`` may move to ``new``."""
    return new in ALLOWED_TRANSITIONS[current]


def total_counts(per_store: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Counts per status (and ``pending``/``processing``) added up over several stores, such
    as the shards of a tier; a count that is zero everywhere stays, as zero."""
    total: Counter[str] = Counter()
    for counts in per_store:
        total.update(counts)
    return dict(total)

"""The ports: what the services need from the outside world, as Protocols.

Adapters implement them without importing each other; ``bootstrap`` wires them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from delayline.domain.events import EventStatus, ScheduledEvent
from delayline.domain.outcomes import ExecutionResult


class Clock(Protocol):
    """Wall-clock time, injectable so time-based logic is testable without sleeping."""

    def now(self) -> datetime:
        """The current time, aware, UTC."""
        ...


@dataclass(frozen=True, slots=True)
class Claim:
    """A batch of due events leased to one dispatcher; ``token`` fences its acks.

    ``next_due_us``: due time of the earliest event left pending after the claim (None: none).
    ``fire_at_us``: per event, when it may be published: its due time, or for a retry the end
    of its backoff (its ``scheduled_at`` stays the original). Empty: at ``scheduled_at``.
    """

    token: str
    events: Sequence[ScheduledEvent]
    next_due_us: int | None = None
    fire_at_us: Sequence[int] = ()


@dataclass(frozen=True, slots=True)
class Finished:
    """The final state of one claimed event, to acknowledge."""

    schedule_id: str
    status: EventStatus
    reason: str | None = None


class NearTermStore(Protocol):
    """The Redis tier: events due soon, claimed with leases and fired from here."""

    async def schedule(self, events: Sequence[ScheduledEvent]) -> list[bool]:
        """Insert each event unless its schedule_id exists; True where it was inserted."""
        ...

    async def claim(self, now_us: int, limit: int, lease_seconds: float) -> Claim:
        """Lease up to ``limit`` events due at ``now_us``, highest priority first per instant."""
        ...

    async def ack(self, token: str, finished: Sequence[Finished]) -> int:
        """Record final states of events still leased under ``token``; returns how many."""
        ...

    async def retry(self, token: str, event: ScheduledEvent, due_us: int) -> bool:
        """Return a leased event to the due set at ``due_us`` (with its attempts and error)."""
        ...

    async def cancel(self, schedule_id: str) -> bool:
        """Remove a pending or leased event; True if it was there."""
        ...

    async def reschedule(self, schedule_id: str, due_us: int) -> bool:
        """Move a pending event to ``due_us``; False if it is not pending here."""
        ...

    async def reap(self, now_us: int) -> int:
        """Return events whose lease expired to the due set; returns how many."""
        ...

    async def get(self, schedule_id: str) -> ScheduledEvent | None:
        """The event with its status (pending, processing, or a remembered final state)."""
        ...

    async def next_due_us(self) -> int | None:
        """Due time of the earliest pending event."""
        ...

    async def counts(self) -> dict[str, int]:
        """``pending``, ``processing`` and the per-status totals this store has seen."""
        ...

    def wakeups(self) -> AsyncIterator[int]:
        """Due times (epoch µs) of events that became the earliest, from any process."""
        ...


class LongTermStore(Protocol):
    """The ClickHouse tier: events due after the immediate horizon."""

    async def insert(self, events: Sequence[ScheduledEvent]) -> list[bool]:
        """Insert events whose schedule_id is not already stored; True where inserted."""
        ...

    async def get(self, schedule_id: str) -> ScheduledEvent | None:
        """The latest version of the event, with its status."""
        ...

    async def cancel(self, schedule_id: str) -> bool:
        """Mark a pending event cancelled; True if it was pending."""
        ...

    async def reschedule(self, schedule_id: str, scheduled_at: datetime) -> bool:
        """Move a pending event to a new due time; True if it was pending."""
        ...

    async def counts(self) -> dict[str, int]:
        """Events per status."""
        ...

    async def next_due(self) -> datetime | None:
        """Due time of the earliest pending event."""
        ...


class EventPublisher(Protocol):
    """Publishes fired events to their Kafka topics."""

    async def publish(self, events: Sequence[ScheduledEvent]) -> list[BaseException | float]:
        """Publish each event; per event the wall time (epoch s) of the broker's ack, or the
        error."""
        ...


class OutcomeSink(Protocol):
    """Receives every execution result; must never block or fail the dispatcher."""

    def record(self, result: ExecutionResult) -> None:
        """Take one result (buffered; written later, off the firing path)."""
        ...


class SchedulerApi(Protocol):
    """What the ingress adapters (HTTP, Kafka consumer, CLI) need from the scheduler service."""

    def build_event(self, **fields: Any) -> ScheduledEvent:
        """Validate fields into an event (raises ``InvalidEventError``), using the settings'
        body-size limit and default ``max_delay_seconds``."""
        ...

    async def schedule_events(
        self, events: Sequence[ScheduledEvent], source: str = "api"
    ) -> list[bool]:
        """Store validated events in their tier, durably; True where new (False: id existed).

        ``source`` (api, http, kafka) labels the scheduling metrics."""
        ...

    async def cancel_event(self, schedule_id: str) -> bool:
        """Cancel a pending event in whichever tier it is."""
        ...

    async def reschedule_event(self, schedule_id: str, scheduled_at: datetime) -> bool:
        """Move a pending event to a new time (possibly to the other tier)."""
        ...

    async def get_event(self, schedule_id: str) -> ScheduledEvent | None:
        """The event with its status, from whichever tier holds it."""
        ...

    async def get_stats(self) -> dict[str, Any]:
        """Pending per tier, counts per status, next due times, sync lag."""
        ...

    async def sync_clickhouse_to_redis(self) -> int:
        """Run the sync now; returns how many events it moved."""
        ...

    async def cleanup_old_schedules(self) -> int:
        """Run the cleanup now; returns how many rows/keys it removed."""
        ...

"""The ports: what the services need from the outside world, as Protocols.

Adapters implement them without importing each other; ``bootstrap`` wires them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from delayline.domain.events import EventStatus, ScheduledEvent
from delayline.domain.outcomes import Delivery, EventFilter, ExecutionResult, LifecycleEntry


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


class Upserted(StrEnum):
    """What an upsert by schedule id did (docs/INGRESS.md has the rule per ingress form)."""

    CREATED = "created"  # the id was unknown: scheduled
    REPLACED = "replaced"  # a pending version was replaced (in either tier)
    SCHEDULED_AGAIN = "scheduled_again"  # the id was cancelled or had fired: scheduled again
    AFTER_FIRING = "after_firing"  # the id is being fired: this version is scheduled after it
    UNCHANGED = "unchanged"  # this version (or a newer one) is already stored or remembered


class NearTermStore(Protocol):
    """The Redis tier: events due soon, claimed with leases and fired from here."""

    async def schedule(self, events: Sequence[ScheduledEvent]) -> list[bool]:
        """Insert each event unless its schedule_id exists; True where it was inserted."""
        ...

    async def upsert(self, items: Sequence[tuple[ScheduledEvent, str, bool]]) -> list[int]:
        """Upsert ``(event, revision, due here)`` items in order; per item the code of
        ``adapters/lua/upsert.lua`` (0 ignored, 1 new, 2 replaced, 3 firing, 4 again)."""
        ...

    async def known(self, ids: Sequence[str]) -> set[str]:
        """The ids pending, leased or remembered here."""
        ...

    async def claim(
        self,
        now_us: int,
        limit: int,
        lease_seconds: float,
        shards: Collection[int] | None = None,
    ) -> Claim:
        """Lease up to ``limit`` events due at ``now_us`` from ``shards`` (None: all), highest
        priority first per instant."""
        ...

    async def ack(self, token: str, finished: Sequence[Finished], now_us: int | None) -> int:
        """Record final states (at ``now_us``) of events still leased under ``token``;
        returns how many."""
        ...

    async def retry(self, token: str, event: ScheduledEvent, due_us: int) -> bool:
        """Return a leased event to the due set at ``due_us`` (with its attempts and error)."""
        ...

    async def cancel(self, schedule_id: str) -> bool:
        """Remove a pending or leased event; True if it was there."""
        ...

    async def cancel_many(self, ids: Sequence[str]) -> list[bool]:
        """:meth:`cancel` for each of ``ids`` in one round trip; True where cancelled."""
        ...

    async def reschedule(self, schedule_id: str, due_us: int) -> bool:
        """Move a pending event to ``due_us``; False if it is not pending here."""
        ...

    async def reap(
        self, now_us: int, limit: int = 1000, shards: Collection[int] | None = None
    ) -> int:
        """Return events of ``shards`` (None: all) whose lease expired to the due set;
        returns how many."""
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

    async def upsert(self, events: Sequence[ScheduledEvent]) -> list[int]:
        """Make each event its id's current version: 1 new, 2 new version, 0 unchanged."""
        ...

    async def known(self, ids: Sequence[str]) -> set[str]:
        """The ids stored here in any version."""
        ...

    async def supersede(self, ids: Sequence[str]) -> set[str]:
        """Cancel the live version of each id (a newer one lives in the other tier); returns
        the ids that had one."""
        ...

    async def get(self, schedule_id: str) -> ScheduledEvent | None:
        """The latest version of the event, with its status."""
        ...

    async def cancel(self, schedule_id: str) -> bool:
        """Mark a pending event cancelled; True if it was pending."""
        ...

    async def cancel_live(self, schedule_id: str) -> EventStatus | None:
        """Cancel a pending or queued event; the status it had, or None."""
        ...

    async def cancel_many(self, ids: Sequence[str]) -> dict[str, EventStatus]:
        """:meth:`cancel_live` for many events at once: the status each cancelled one had."""
        ...

    async def reschedule(self, schedule_id: str, scheduled_at: datetime) -> bool:
        """Move a pending event to a new due time; True if it was pending."""
        ...

    async def reschedule_many(
        self, ids: Sequence[str], scheduled_at: datetime
    ) -> dict[str, ScheduledEvent]:
        """:meth:`reschedule` for many events at once: the new version of each one moved."""
        ...

    async def counts(self) -> dict[str, int]:
        """Events per status."""
        ...

    async def next_due(self) -> datetime | None:
        """Due time of the earliest pending event."""
        ...


class EventPublisher(Protocol):
    """Publishes fired events to their Kafka topics."""

    async def publish(self, events: Sequence[ScheduledEvent]) -> list[BaseException | Delivery]:
        """Publish each event; per event the broker's delivery report (its wall time, partition
        and offset), or the error."""
        ...


class OutcomeSink(Protocol):
    """Receives every execution result; must never block or fail the dispatcher."""

    def record(self, result: ExecutionResult) -> None:
        """Take one result (buffered; written later, off the firing path)."""
        ...


class LifecycleSink(Protocol):
    """Receives every transition of every event; must never block or fail its caller.

    May be called from any thread (the dispatcher may run on its own event loop)."""

    def transition(self, entry: LifecycleEntry) -> None:
        """Take one transition (buffered; written later, off the firing path)."""
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

    async def upsert_events(
        self, events: Sequence[ScheduledEvent], revisions: Sequence[str], source: str = "api"
    ) -> list[Upserted]:
        """Store each event as its id's current version, in order, in its tier, durably;
        ``revisions`` tell a redelivered or older version from a newer one."""
        ...

    async def replace(self, event: ScheduledEvent, source: str = "api") -> Upserted:
        """Replace whatever state ``event``'s id is in (an identical version: unchanged)."""
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

    async def get_history(self, schedule_id: str) -> list[LifecycleEntry]:
        """Every recorded transition of the event, oldest first."""
        ...

    async def find_events(
        self, match: EventFilter, *, after: str = "", limit: int = 100
    ) -> list[ScheduledEvent]:
        """Events matching ``match`` in either tier, in id order after the id ``after``."""
        ...

    async def cancel_by_key(self, correlation_id: str) -> dict[str, int]:
        """Cancel every pending event with the correlation id; how many per tier."""
        ...

    async def reschedule_by_key(
        self, correlation_id: str, scheduled_at: datetime
    ) -> dict[str, int]:
        """Move every pending event with the correlation id; how many per tier."""
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


class DelayedMessage(Protocol):
    """A record consumed from the delayed topic, as the Kafka adapter hands it over;
    ``header_error`` says why its headers could not be read (then ``headers`` is empty)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes | None]]: ...
    @property
    def timestamp_ms(self) -> int | None: ...
    @property
    def header_error(self) -> str | None: ...

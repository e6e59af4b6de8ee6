"""The two storage tiers (Redis near, ClickHouse far), the sync's lease, key rotation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol, TypeVar

from delayline.domain.events import EventStatus, ScheduledEvent


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
        returns how many. A store over several servers that reached only some raises
        :class:`delayline.errors.PartlyAcknowledged` naming the rest."""
        ...

    async def retry(self, token: str, event: ScheduledEvent, due_us: int) -> bool:
        """Return a leased event to the due set at ``due_us`` (with its attempts and error)."""
        ...

    async def cancel(self, schedule_id: str) -> bool:
        """Cancel a pending event and remember it cancelled; True if it was pending (a leased
        event is firing and is not recalled)."""
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

    async def shard_counts(self) -> list[dict[str, int]]:
        """:meth:`counts` of each shard, in shard order."""
        ...

    def wakeups(self) -> AsyncIterator[int]:
        """Due times (epoch µs) of events that became the earliest, from any process."""
        ...

    async def discard(self, schedule_id: str, written: ScheduledEvent | None = None) -> bool:
        """Remove a pending event (not a leased one) without recording a final state; with
        ``written``, only if it is still that copy. True if it was removed."""
        ...

    async def remove_orphans(self) -> int:
        """Remove payloads no index refers to any more; returns how many."""
        ...

    async def rekey_page(self, cursor: str, count: int) -> tuple[str, RekeyPage]:
        """See :meth:`RekeyableTier.rekey_page`."""
        ...

    async def parked(self) -> int:
        """How many events are set aside because their payload cannot be opened."""
        ...


class DuePage(Protocol):
    """Due events as the far tier read them, earliest first; handed back to
    :meth:`LongTermStore.mark_queued` as they are (the tier may keep in it what it needs to
    mark them)."""

    @property
    def events(self) -> Sequence[ScheduledEvent]:
        """The events read."""
        ...


PageT = TypeVar("PageT", bound=DuePage)
"""The page type of one long-term store implementation."""


class LongTermStore(Protocol[PageT]):
    """The ClickHouse tier: events due after the immediate horizon.

    Generic over the page its sync reads return (``LongTermStore[Any]`` where the pages are
    not used)."""

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

    async def due_after(
        self, until: datetime, limit: int, after: tuple[datetime, int, str] | None
    ) -> PageT:
        """Up to ``limit`` pending events due at or before ``until`` in (due time, priority,
        id) order, after the key ``after`` (None: from the start); what the sync moves."""
        ...

    async def mark_queued(self, page: PageT) -> list[str]:
        """Mark the events of ``page`` queued in Redis; the ids not marked because they
        changed since they were read (the sync takes those back out of Redis)."""
        ...

    async def cleanup(self, older_than: datetime) -> int:
        """Remove schedules finished before ``older_than``; returns how many."""
        ...

    async def rekey_page(self, cursor: str, count: int) -> tuple[str, RekeyPage]:
        """See :meth:`RekeyableTier.rekey_page`."""
        ...


@dataclass
class RekeyPage:
    """What one step of a tier's key rotation did."""

    scanned: int = 0
    rekeyed: int = 0
    unreadable: int = 0
    restored: int = 0


class RekeyableTier(Protocol):
    """A tier whose stored payloads can be re-sealed a page at a time."""

    async def rekey_page(self, cursor: str, count: int) -> tuple[str, RekeyPage]:
        """Re-seal up to ``count`` payloads after ``cursor`` ("" to start); the next cursor
        ("" when done) and what was done."""
        ...


class Lease(Protocol):
    """A lease shared by every node (the sync's), fenced by a token that only grows."""

    async def acquire(self) -> int | None:
        """Take the lease if free; its fencing token, or None if another node holds it."""
        ...

    async def renew(self) -> int | None:
        """Extend the lease if still held; its token, or None if it was lost."""
        ...

    async def release(self) -> bool:
        """Give the lease up if still held; True if it was."""
        ...

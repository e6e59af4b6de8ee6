"""Adapters behind a circuit breaker: each implements its port by calling through the breaker.

Every coroutine method of the port goes through :meth:`CircuitBreaker.call`, so an outage
becomes :class:`delayline.errors.DependencyUnavailable` (and an open breaker fails at once)
while bad input passes through unchanged. Plain methods, properties and async iterators are
forwarded as they are: they do no I/O of their own, or (``wakeups``) reconnect by themselves.

The publisher is the exception: it never raises for unavailability; see
:class:`GuardedPublisher`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, Generic, TypeVar

from delayline.domain.audit import AuditEntry, AuditQuery
from delayline.domain.events import EventStatus, ScheduledEvent
from delayline.domain.outcomes import Delivery, EventFilter, LifecycleEntry
from delayline.errors import DependencyUnavailable, ErrorClass, classify
from delayline.ports import (
    AuditStore,
    Claim,
    DelayedMessage,
    EventPublisher,
    Finished,
    LifecycleStore,
    LongTermStore,
    MessageSource,
    NearTermStore,
    PageT,
    RekeyPage,
)
from delayline.resilience import CircuitBreaker

NearT = TypeVar("NearT", bound=NearTermStore)


class GuardedNearTermStore(Generic[NearT]):
    """A :class:`NearTermStore` (Redis) behind a breaker; ``inner`` keeps its own type for
    the composition root's start-up checks."""

    def __init__(self, inner: NearT, breaker: CircuitBreaker) -> None:
        self.inner = inner
        self.breaker = breaker

    async def schedule(self, events: Sequence[ScheduledEvent]) -> list[bool]:
        return await self.breaker.call(self.inner.schedule, events)

    async def upsert(self, items: Sequence[tuple[ScheduledEvent, str, bool]]) -> list[int]:
        return await self.breaker.call(self.inner.upsert, items)

    async def known(self, ids: Sequence[str]) -> set[str]:
        return await self.breaker.call(self.inner.known, ids)

    async def claim(
        self,
        now_us: int,
        limit: int,
        lease_seconds: float,
        shards: Collection[int] | None = None,
    ) -> Claim:
        return await self.breaker.call(self.inner.claim, now_us, limit, lease_seconds, shards)

    async def ack(self, token: str, finished: Sequence[Finished], now_us: int | None) -> int:
        return await self.breaker.call(self.inner.ack, token, finished, now_us)

    async def retry(self, token: str, event: ScheduledEvent, due_us: int) -> bool:
        return await self.breaker.call(self.inner.retry, token, event, due_us)

    async def cancel(self, schedule_id: str) -> bool:
        return await self.breaker.call(self.inner.cancel, schedule_id)

    async def cancel_many(self, ids: Sequence[str]) -> list[bool]:
        return await self.breaker.call(self.inner.cancel_many, ids)

    async def reschedule(self, schedule_id: str, due_us: int) -> bool:
        return await self.breaker.call(self.inner.reschedule, schedule_id, due_us)

    async def reap(
        self, now_us: int, limit: int = 1000, shards: Collection[int] | None = None
    ) -> int:
        return await self.breaker.call(self.inner.reap, now_us, limit, shards)

    async def get(self, schedule_id: str) -> ScheduledEvent | None:
        return await self.breaker.call(self.inner.get, schedule_id)

    async def next_due_us(self) -> int | None:
        return await self.breaker.call(self.inner.next_due_us)

    async def counts(self) -> dict[str, int]:
        return await self.breaker.call(self.inner.counts)

    async def shard_counts(self) -> list[dict[str, int]]:
        return await self.breaker.call(self.inner.shard_counts)

    def wakeups(self) -> AsyncIterator[int]:
        return self.inner.wakeups()

    async def discard(self, schedule_id: str, written: ScheduledEvent | None = None) -> bool:
        return await self.breaker.call(self.inner.discard, schedule_id, written)

    async def remove_orphans(self) -> int:
        return await self.breaker.call(self.inner.remove_orphans)

    async def rekey_page(self, cursor: str, count: int) -> tuple[str, RekeyPage]:
        return await self.breaker.call(self.inner.rekey_page, cursor, count)

    async def parked(self) -> int:
        return await self.breaker.call(self.inner.parked)


class GuardedLongTermStore(Generic[PageT]):
    """A :class:`LongTermStore` (ClickHouse) behind a breaker."""

    def __init__(self, inner: LongTermStore[PageT], breaker: CircuitBreaker) -> None:
        self.inner = inner
        self.breaker = breaker

    async def insert(self, events: Sequence[ScheduledEvent]) -> list[bool]:
        return await self.breaker.call(self.inner.insert, events)

    async def upsert(self, events: Sequence[ScheduledEvent]) -> list[int]:
        return await self.breaker.call(self.inner.upsert, events)

    async def known(self, ids: Sequence[str]) -> set[str]:
        return await self.breaker.call(self.inner.known, ids)

    async def supersede(self, ids: Sequence[str]) -> set[str]:
        return await self.breaker.call(self.inner.supersede, ids)

    async def get(self, schedule_id: str) -> ScheduledEvent | None:
        return await self.breaker.call(self.inner.get, schedule_id)

    async def cancel(self, schedule_id: str) -> bool:
        return await self.breaker.call(self.inner.cancel, schedule_id)

    async def cancel_live(self, schedule_id: str) -> EventStatus | None:
        return await self.breaker.call(self.inner.cancel_live, schedule_id)

    async def cancel_many(self, ids: Sequence[str]) -> dict[str, EventStatus]:
        return await self.breaker.call(self.inner.cancel_many, ids)

    async def reschedule(self, schedule_id: str, scheduled_at: datetime) -> bool:
        return await self.breaker.call(self.inner.reschedule, schedule_id, scheduled_at)

    async def reschedule_many(
        self, ids: Sequence[str], scheduled_at: datetime
    ) -> dict[str, ScheduledEvent]:
        return await self.breaker.call(self.inner.reschedule_many, ids, scheduled_at)

    async def counts(self) -> dict[str, int]:
        return await self.breaker.call(self.inner.counts)

    async def next_due(self) -> datetime | None:
        return await self.breaker.call(self.inner.next_due)

    async def due_after(
        self, until: datetime, limit: int, after: tuple[datetime, int, str] | None
    ) -> PageT:
        return await self.breaker.call(self.inner.due_after, until, limit, after)

    async def mark_queued(self, page: PageT) -> list[str]:
        return await self.breaker.call(self.inner.mark_queued, page)

    async def cleanup(self, older_than: datetime) -> int:
        return await self.breaker.call(self.inner.cleanup, older_than)

    async def rekey_page(self, cursor: str, count: int) -> tuple[str, RekeyPage]:
        return await self.breaker.call(self.inner.rekey_page, cursor, count)


class GuardedLifecycleStore:
    """A :class:`LifecycleStore` behind a breaker (reads answer 503 while it is open)."""

    def __init__(self, inner: LifecycleStore, breaker: CircuitBreaker) -> None:
        self.inner = inner
        self.breaker = breaker

    async def write_entries(self, entries: Sequence[LifecycleEntry]) -> None:
        await self.breaker.call(self.inner.write_entries, entries)

    async def history(self, schedule_id: str) -> list[LifecycleEntry]:
        return await self.breaker.call(self.inner.history, schedule_id)

    async def histories(self, ids: Sequence[str]) -> dict[str, list[LifecycleEntry]]:
        return await self.breaker.call(self.inner.histories, ids)

    async def find(self, match: EventFilter, *, after: str = "", limit: int = 100) -> list[str]:
        return await self.breaker.call(self.inner.find, match, after=after, limit=limit)


class GuardedAuditStore:
    """An :class:`AuditStore` behind a breaker (reads answer 503 while it is open)."""

    def __init__(self, inner: AuditStore, breaker: CircuitBreaker) -> None:
        self.inner = inner
        self.breaker = breaker

    async def write_entries(self, entries: Sequence[AuditEntry]) -> None:
        await self.breaker.call(self.inner.write_entries, entries)

    async def find(self, query: AuditQuery) -> list[AuditEntry]:
        return await self.breaker.call(self.inner.find, query)


class GuardedMessageSource:
    """A :class:`MessageSource` (the delayed topic) behind a breaker."""

    def __init__(self, inner: MessageSource, breaker: CircuitBreaker) -> None:
        self.inner = inner
        self.breaker = breaker

    async def start(self) -> None:
        await self.breaker.call(self.inner.start)

    async def stop(self) -> None:
        await self.breaker.call(self.inner.stop)

    async def poll(self, max_messages: int, timeout: float) -> Sequence[DelayedMessage]:
        return await self.breaker.call(self.inner.poll, max_messages, timeout)

    async def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        await self.breaker.call(self.inner.commit, offsets)

    async def pause(self) -> None:
        await self.breaker.call(self.inner.pause)

    async def resume(self) -> None:
        await self.breaker.call(self.inner.resume)

    def take_revoked(self) -> set[tuple[str, int]]:
        return self.inner.take_revoked()

    async def dead_letter(self, items: Sequence[tuple[Any, str]]) -> Sequence[tuple[Any, str]]:
        return await self.breaker.call(self.inner.dead_letter, items)

    @property
    def lag(self) -> int | None:
        return self.inner.lag


class GuardedPublisher:
    """An :class:`EventPublisher` behind a breaker fed by delivery reports.

    ``publish`` never raises for unavailability: while the breaker is open every event gets a
    :class:`DependencyUnavailable` result, which the dispatcher retries later without counting
    it against the event.
    """

    def __init__(self, inner: EventPublisher, breaker: CircuitBreaker) -> None:
        self.inner = inner
        self.breaker = breaker

    async def publish(self, events: Sequence[ScheduledEvent]) -> list[BaseException | Delivery]:
        """Publish unless the breaker is open; feed it with the delivery outcomes."""
        if not events:
            return []
        if not self.breaker.allow():
            return [DependencyUnavailable(self.breaker.name, "circuit open") for _ in events]
        try:
            results = await self.inner.publish(events)
        except asyncio.CancelledError:
            self.breaker.release()
            raise
        except Exception:
            self.breaker.record_failure()
            raise
        delivered = any(not isinstance(r, BaseException) for r in results)
        unavailable = any(
            isinstance(r, BaseException) and classify(r) is ErrorClass.UNAVAILABLE for r in results
        )
        if delivered or not unavailable:
            self.breaker.record_success()
        else:
            self.breaker.record_failure()
        return results

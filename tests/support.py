"""Helpers for tests against real servers: read what was fired to a topic; wrap the
long-term store with faults for the sync."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from delayline.domain.events import EventStatus, ScheduledEvent
from delayline.ports import Claim, Finished, LongTermStore, NearTermStore, PageT, RekeyPage

T = TypeVar("T")


@dataclass(frozen=True)
class Fired:
    """One message read back from a topic, with the time it was read."""

    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    timestamp_ms: int
    read_at: float
    partition: int = -1
    offset: int = -1

    def header(self, name: str) -> str:
        """A header decoded as UTF-8."""
        return self.headers[name].decode()


def create_topics(bootstrap: str, *topics: str, partitions: int = 1) -> None:
    """Create topics (so readers can be assigned before the first message)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(t, partitions, 1) for t in topics])
    for future in futures.values():
        future.result(10)


class TopicReader:
    """Reads a topic from the beginning by assignment (no group join: no rebalance delay)."""

    def __init__(
        self, bootstrap: str, topic: str, partitions: int = 1, *, create: bool = True
    ) -> None:
        if create:
            create_topics(bootstrap, topic, partitions=partitions)
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"reader-{topic}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        self._consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        self.messages: list[Fired] = []

    def read(self, count: int, timeout: float = 20.0) -> list[Fired]:
        """Wait until ``count`` messages in all were read (or ``timeout``); returns them all."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            msg = self._consumer.poll(0.05)
            if msg is None or msg.error():
                continue
            self.messages.append(
                Fired(
                    key=msg.key(),
                    value=msg.value(),
                    headers=_headers(msg.headers()),
                    timestamp_ms=msg.timestamp()[1],
                    read_at=time.time(),
                    partition=msg.partition() or 0,
                    offset=msg.offset() or 0,
                )
            )
        return self.messages

    def read_ids(self, ids: Collection[str], timeout: float = 20.0) -> list[Fired]:
        """Wait until a message with each of ``ids`` in its ``x-schedule-id`` was read (or
        ``timeout``): duplicates do not count twice. Returns every message read."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = {m.headers.get("x-schedule-id", b"").decode() for m in self.messages}
            if seen >= set(ids):
                break
            self.read(len(self.messages) + 1, timeout=min(1.0, deadline - time.monotonic()))
        return self.messages

    def read_for(self, seconds: float) -> list[Fired]:
        """Read whatever arrives within ``seconds``."""
        self.read(10**9, timeout=seconds)
        return self.messages

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()


async def eventually(get: Callable[[], Awaitable[T]], timeout: float = 5.0) -> T:
    """Poll ``get`` until it returns something truthy (or time runs out); its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await get()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)


async def eventually_status(get: Callable[[], Awaitable[object]], timeout: float = 5.0) -> object:
    """Poll ``get`` until it returns something with a terminal status (or time runs out)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await get()
        status = getattr(value, "status", None)
        if (status is not None and status.is_terminal) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.02)


def _headers(raw: object) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for key, value in raw or []:  # type: ignore[attr-defined]
        out[str(key)] = value if isinstance(value, bytes) else str(value or "").encode()
    return out


class ForwardingFar(Generic[PageT]):
    """A :class:`LongTermStore` that forwards every call to ``inner``; fault wrappers for the
    sync override the few calls they break."""

    def __init__(self, inner: LongTermStore[PageT]) -> None:
        self.inner = inner

    async def insert(self, events: Sequence[ScheduledEvent]) -> list[bool]:
        return await self.inner.insert(events)

    async def upsert(self, events: Sequence[ScheduledEvent]) -> list[int]:
        return await self.inner.upsert(events)

    async def known(self, ids: Sequence[str]) -> set[str]:
        return await self.inner.known(ids)

    async def supersede(self, ids: Sequence[str]) -> set[str]:
        return await self.inner.supersede(ids)

    async def get(self, schedule_id: str) -> ScheduledEvent | None:
        return await self.inner.get(schedule_id)

    async def cancel(self, schedule_id: str) -> bool:
        return await self.inner.cancel(schedule_id)

    async def cancel_live(self, schedule_id: str) -> EventStatus | None:
        return await self.inner.cancel_live(schedule_id)

    async def cancel_many(self, ids: Sequence[str]) -> dict[str, EventStatus]:
        return await self.inner.cancel_many(ids)

    async def reschedule(self, schedule_id: str, scheduled_at: datetime) -> bool:
        return await self.inner.reschedule(schedule_id, scheduled_at)

    async def reschedule_many(
        self, ids: Sequence[str], scheduled_at: datetime
    ) -> dict[str, ScheduledEvent]:
        return await self.inner.reschedule_many(ids, scheduled_at)

    async def counts(self) -> dict[str, int]:
        return await self.inner.counts()

    async def next_due(self) -> datetime | None:
        return await self.inner.next_due()

    async def due_after(
        self, until: datetime, limit: int, after: tuple[datetime, int, str] | None
    ) -> PageT:
        return await self.inner.due_after(until, limit, after)

    async def mark_queued(self, page: PageT) -> list[str]:
        return await self.inner.mark_queued(page)

    async def cleanup(self, older_than: datetime) -> int:
        return await self.inner.cleanup(older_than)

    async def rekey_page(self, cursor: str, count: int) -> tuple[str, RekeyPage]:
        return await self.inner.rekey_page(cursor, count)


class ForwardingNear:
    """A :class:`NearTermStore` that forwards every call to ``inner``; fault wrappers for the
    sync override the few calls they break."""

    def __init__(self, inner: NearTermStore) -> None:
        self.inner = inner

    async def schedule(self, events: Sequence[ScheduledEvent]) -> list[bool]:
        return await self.inner.schedule(events)

    async def upsert(self, items: Sequence[tuple[ScheduledEvent, str, bool]]) -> list[int]:
        return await self.inner.upsert(items)

    async def known(self, ids: Sequence[str]) -> set[str]:
        return await self.inner.known(ids)

    async def claim(
        self,
        now_us: int,
        limit: int,
        lease_seconds: float,
        shards: Collection[int] | None = None,
    ) -> Claim:
        return await self.inner.claim(now_us, limit, lease_seconds, shards)

    async def ack(self, token: str, finished: Sequence[Finished], now_us: int | None) -> int:
        return await self.inner.ack(token, finished, now_us)

    async def retry(self, token: str, event: ScheduledEvent, due_us: int) -> bool:
        return await self.inner.retry(token, event, due_us)

    async def cancel(self, schedule_id: str) -> bool:
        return await self.inner.cancel(schedule_id)

    async def cancel_many(self, ids: Sequence[str]) -> list[bool]:
        return await self.inner.cancel_many(ids)

    async def reschedule(self, schedule_id: str, due_us: int) -> bool:
        return await self.inner.reschedule(schedule_id, due_us)

    async def reap(
        self, now_us: int, limit: int = 1000, shards: Collection[int] | None = None
    ) -> int:
        return await self.inner.reap(now_us, limit, shards)

    async def get(self, schedule_id: str) -> ScheduledEvent | None:
        return await self.inner.get(schedule_id)

    async def next_due_us(self) -> int | None:
        return await self.inner.next_due_us()

    async def counts(self) -> dict[str, int]:
        return await self.inner.counts()

    async def shard_counts(self) -> list[dict[str, int]]:
        return await self.inner.shard_counts()

    def wakeups(self) -> AsyncIterator[int]:
        return self.inner.wakeups()

    async def discard(self, schedule_id: str, written: ScheduledEvent | None = None) -> bool:
        return await self.inner.discard(schedule_id, written)

    async def remove_orphans(self) -> int:
        return await self.inner.remove_orphans()

    async def rekey_page(self, cursor: str, count: int) -> tuple[str, RekeyPage]:
        return await self.inner.rekey_page(cursor, count)

    async def parked(self) -> int:
        return await self.inner.parked()


class PagedFar(ForwardingFar[PageT]):
    """The long-term store with faults by page of the sync's read (1-based): a failing read,
    a read that hangs until cancelled, or an action run right after a page was read."""

    def __init__(
        self,
        inner: LongTermStore[PageT],
        *,
        fail_page: int | None = None,
        slow_page: int | None = None,
        after_page: dict[int, Callable[[], Awaitable[None]]] | None = None,
    ) -> None:
        super().__init__(inner)
        self.fail_page = fail_page
        self.slow_page = slow_page
        self.after_page = after_page or {}
        self.pages = 0
        self.slow_started = asyncio.Event()
        self.slow_cancelled = False

    async def due_after(
        self, until: datetime, limit: int, after: tuple[datetime, int, str] | None
    ) -> PageT:
        self.pages += 1
        n = self.pages
        if n == self.fail_page:
            raise RuntimeError(f"read of page {n} failed")
        if n == self.slow_page:
            self.slow_started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.slow_cancelled = True
                raise
        page = await self.inner.due_after(until, limit, after)
        if n in self.after_page:
            await self.after_page[n]()
        return page

"""Helpers for tests against real servers: read what was fired to a topic; wrap the
long-term store with faults for the sync."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from delayline.adapters.clickhouse.long_term_store import ClickHouseLongTermStore, DuePage


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

    def read_for(self, seconds: float) -> list[Fired]:
        """Read whatever arrives within ``seconds``."""
        self.read(10**9, timeout=seconds)
        return self.messages

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()


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


class PagedFar:
    """A long-term store for the sync that forwards to ``inner``, with faults by page number
    (1-based): a failing read, a read that hangs until cancelled, or an action run right
    after a page was read."""

    def __init__(
        self,
        inner: ClickHouseLongTermStore,
        *,
        fail_page: int | None = None,
        slow_page: int | None = None,
        after_page: dict[int, Callable[[], Awaitable[None]]] | None = None,
    ) -> None:
        self.inner = inner
        self.fail_page = fail_page
        self.slow_page = slow_page
        self.after_page = after_page or {}
        self.pages = 0
        self.slow_started = asyncio.Event()
        self.slow_cancelled = False

    async def due_before(self, until: datetime, limit: int) -> DuePage:
        return await self.due_after(until, limit, None)

    async def due_after(
        self, until: datetime, limit: int, after: tuple[datetime, int, str] | None
    ) -> DuePage:
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

    async def mark_queued(self, page: DuePage) -> list[str]:
        return await self.inner.mark_queued(page)

    async def cleanup(self, older_than: datetime) -> int:
        return await self.inner.cleanup(older_than)

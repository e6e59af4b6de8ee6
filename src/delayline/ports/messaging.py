"""Kafka on both sides: the source of delayed messages and the publisher of fired events."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from delayline.domain.events import ScheduledEvent
from delayline.domain.outcomes import Delivery


class EventPublisher(Protocol):
    """Publishes fired events to their Kafka topics."""

    async def publish(self, events: Sequence[ScheduledEvent]) -> list[BaseException | Delivery]:
        """Publish each event; per event the broker's delivery report (its wall time, partition
        and offset), or the error."""
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


class MessageSource(Protocol):
    """The delayed topic, as the ingress consumer reads it."""

    async def start(self) -> None:
        """Connect and join the consumer group."""
        ...

    async def stop(self) -> None:
        """Leave the group and close."""
        ...

    async def poll(self, max_messages: int, timeout: float) -> Sequence[DelayedMessage]:
        """Up to ``max_messages`` records, waiting at most ``timeout`` seconds for the first."""
        ...

    async def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Commit ``(topic, partition) → next offset`` for the group."""
        ...

    async def pause(self) -> None:
        """Stop fetching (a store is unavailable); the group membership stays."""
        ...

    async def resume(self) -> None:
        """Fetch again after :meth:`pause`."""
        ...

    def take_revoked(self) -> set[tuple[str, int]]:
        """The partitions revoked since the last call (their uncommitted work is dropped)."""
        ...

    async def dead_letter(self, items: Sequence[tuple[Any, str]]) -> Sequence[tuple[Any, str]]:
        """Dead-letter ``items``; returns those refused for good (with the error); raises
        when the dead-letter topic cannot be written now."""
        ...

    @property
    def lag(self) -> int | None:
        """Messages behind the end of the topic, as the broker last reported (None: unknown)."""
        ...

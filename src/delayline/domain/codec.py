"""Compact stored form of a :class:`ScheduledEvent` (the Redis tier's payload).

``<JSON of the fields>\\n<body>``: the body's bytes are stored raw after the first newline
(JSON never contains a raw newline), so a JSON body is not escaped a second time and a binary
one needs no encoding; the schedule id is not stored (it is the hash field), nor are empty or
default fields. This keeps Redis memory per pending event small (BENCHMARKS.md has the
bytes per event). The creation time is stored as microseconds before the due time
(``"d"``, 7–13 digits instead of 16).

With a :class:`PayloadSealer` (encryption at rest), the headers and body are sealed together
in the body's place and the JSON carries ``"z": 1`` instead of ``"h"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Protocol

import orjson

from delayline.domain.events import (
    DEFAULT_MAX_DELAY_SECONDS,
    EventStatus,
    ScheduledEvent,
    from_epoch_us,
    to_epoch_us,
)


class UndecryptablePayload(ValueError):
    """A sealed payload that cannot be opened; ``key_id`` names the key it asks for."""

    def __init__(self, key_id: str, reason: str) -> None:
        super().__init__(reason)
        self.key_id = key_id
        self.reason = reason


class PayloadSealer(Protocol):
    """Encrypts an event's headers and body at rest, bound to its schedule id."""

    def seal(
        self, schedule_id: str, entity_type: str, headers: Mapping[str, str], body: bytes
    ) -> bytes:
        """The sealed form of ``headers`` and ``body``."""
        ...

    def open(self, schedule_id: str, sealed: bytes) -> tuple[dict[str, str], bytes]:
        """The headers and body; raises :class:`UndecryptablePayload` naming the key id."""
        ...


def encode_event(event: ScheduledEvent, sealer: PayloadSealer | None = None) -> bytes:
    """Serialize ``event`` without its id and status (the store knows both); with ``sealer``,
    its headers and body are sealed."""
    due_us = event.due_us
    doc: dict[str, Any] = {
        "t": event.topic,
        "s": due_us,
        "d": due_us - to_epoch_us(event.created_at),
    }
    if event.entity_type:
        doc["e"] = event.entity_type
    if event.action:
        doc["a"] = event.action
    if event.correlation_id:
        doc["c"] = event.correlation_id
    if event.max_delay_seconds != DEFAULT_MAX_DELAY_SECONDS:
        doc["m"] = event.max_delay_seconds
    if event.priority:
        doc["p"] = event.priority
    if sealer is not None:
        doc["z"] = 1
    elif event.headers:
        doc["h"] = dict(event.headers)
    if event.attempts:
        doc["n"] = event.attempts
    if event.last_error:
        doc["x"] = event.last_error
    if sealer is None:
        return orjson.dumps(doc) + b"\n" + event.body
    sealed = sealer.seal(event.schedule_id, event.entity_type, event.headers, event.body)
    return orjson.dumps(doc) + b"\n" + sealed


def is_sealed(raw: bytes) -> bool:
    """True when ``raw`` (from :func:`encode_event`) holds a sealed payload."""
    meta, _, _ = raw.partition(b"\n")
    return bool(orjson.loads(meta).get("z"))


def decode_event(
    raw: bytes,
    schedule_id: str,
    status: EventStatus = EventStatus.PENDING,
    sealer: PayloadSealer | None = None,
) -> ScheduledEvent:
    """The event serialized by :func:`encode_event`, with its id and ``status``.

    A sealed payload is opened with ``sealer``; without one, or when it cannot be opened,
    :class:`UndecryptablePayload` is raised.
    """
    meta, _, body = raw.partition(b"\n")
    doc = orjson.loads(meta)
    headers = doc.get("h", {})
    if doc.get("z"):
        if sealer is None:
            raise UndecryptablePayload("", "undecryptable: sealed, and no key ring configured")
        headers, body = sealer.open(schedule_id, body)
    return _event(doc, schedule_id, status, headers, body)


UNREADABLE = "undecryptable: "
"""How the reason of an :class:`UndecryptablePayload` starts (and so an unopened event's
``last_error``)."""


def check_opened(event: ScheduledEvent) -> None:
    """Raise :class:`UndecryptablePayload` for an event read without its payload (the ring
    could not open it): it must not be stored anew, which would lose the payload."""
    reason = event.last_error or ""
    if reason.startswith(UNREADABLE) or reason.startswith("parked: " + UNREADABLE):
        raise UndecryptablePayload("", reason.removeprefix("parked: "))


def decode_unopened(
    raw: bytes, schedule_id: str, status: EventStatus, reason: str
) -> ScheduledEvent:
    """The event of ``raw`` without its (sealed) headers and body, ``reason`` as its error."""
    doc = orjson.loads(raw.partition(b"\n")[0])
    return replace(_event(doc, schedule_id, status, {}, b""), last_error=reason)


def _event(
    doc: dict[str, Any],
    schedule_id: str,
    status: EventStatus,
    headers: Mapping[str, str],
    body: bytes,
) -> ScheduledEvent:
    due_us: int = doc["s"]
    created = from_epoch_us(due_us - doc["d"])
    return ScheduledEvent(
        schedule_id=schedule_id,
        topic=doc["t"],
        entity_type=doc.get("e", ""),
        action=doc.get("a", ""),
        body=body,
        correlation_id=doc.get("c", ""),
        headers=headers,
        scheduled_at=from_epoch_us(due_us),
        max_delay_seconds=doc.get("m", DEFAULT_MAX_DELAY_SECONDS),
        priority=doc.get("p", 0),
        status=status,
        created_at=created,
        updated_at=created,
        attempts=doc.get("n", 0),
        last_error=doc.get("x"),
    )


def sealed_part(raw: bytes) -> tuple[str, bytes | None]:
    """The entity type of ``raw`` (from :func:`encode_event`) and its sealed payload (None:
    stored in clear)."""
    meta, _, body = raw.partition(b"\n")
    doc = orjson.loads(meta)
    return doc.get("e", ""), (body if doc.get("z") else None)


def reseal(raw: bytes, schedule_id: str, sealer: PayloadSealer) -> bytes:
    """``raw`` with its headers and body sealed afresh by ``sealer`` (with the key its tenant
    uses now); one stored in clear is sealed. Raises :class:`UndecryptablePayload`."""
    meta, _, body = raw.partition(b"\n")
    doc = orjson.loads(meta)
    if doc.get("z"):
        headers, body = sealer.open(schedule_id, body)
    else:
        headers = doc.pop("h", {})
        doc["z"] = 1
        meta = orjson.dumps(doc)
    return meta + b"\n" + sealer.seal(schedule_id, doc.get("e", ""), headers, body)


def with_due(raw: bytes, due_us: int) -> bytes:
    """``raw`` due at ``due_us`` instead, its creation time kept; the headers and body are not
    touched (a sealed payload is moved without being opened). A store's own field ``"r"`` (the
    Redis tier's revision) is left out: the store keeps it itself."""
    meta, _, body = raw.partition(b"\n")
    doc = orjson.loads(meta)
    doc.pop("r", None)
    doc["d"] += due_us - doc["s"]
    doc["s"] = due_us
    return orjson.dumps(doc) + b"\n" + body

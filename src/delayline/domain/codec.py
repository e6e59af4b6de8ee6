"""Compact stored form of a :class:`ScheduledEvent` (the Redis tier's payload).

``<JSON of the fields>\\n<body>``: the body's bytes are stored raw after the first newline
(JSON never contains a raw newline), so a JSON body is not escaped a second time and a binary
one needs no encoding; the schedule id is not stored (it is the hash field), nor are empty or
default fields. This keeps Redis memory per pending event small (DESIGN.md: ≈ 473 B budget
with a 300-byte body). The creation time is stored as microseconds before the due time
(``"d"``, 7–13 digits instead of 16); values written before 2026-11 carry it absolute (``"k"``)
and still decode.
"""

from __future__ import annotations

from typing import Any

import orjson

from delayline.domain.events import (
    DEFAULT_MAX_DELAY_SECONDS,
    EventStatus,
    ScheduledEvent,
    from_epoch_us,
    to_epoch_us,
)


def encode_event(event: ScheduledEvent) -> bytes:
    """Serialize ``event`` without its id and status (the store knows both)."""
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
    if event.headers:
        doc["h"] = dict(event.headers)
    if event.attempts:
        doc["n"] = event.attempts
    if event.last_error:
        doc["x"] = event.last_error
    return orjson.dumps(doc) + b"\n" + event.body


def decode_event(
    raw: bytes, schedule_id: str, status: EventStatus = EventStatus.PENDING
) -> ScheduledEvent:
    """The event serialized by :func:`encode_event`, with its id and ``status``."""
    meta, _, body = raw.partition(b"\n")
    doc = orjson.loads(meta)
    due_us: int = doc["s"]
    created = from_epoch_us(due_us - doc["d"] if "d" in doc else doc["k"])
    return ScheduledEvent(
        schedule_id=schedule_id,
        topic=doc["t"],
        entity_type=doc.get("e", ""),
        action=doc.get("a", ""),
        body=body,
        correlation_id=doc.get("c", ""),
        headers=doc.get("h", {}),
        scheduled_at=from_epoch_us(due_us),
        max_delay_seconds=doc.get("m", DEFAULT_MAX_DELAY_SECONDS),
        priority=doc.get("p", 0),
        status=status,
        created_at=created,
        updated_at=created,
        attempts=doc.get("n", 0),
        last_error=doc.get("x"),
    )

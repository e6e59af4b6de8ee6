"""Compact JSON form of a :class:`ScheduledEvent`, shared by the stores.

Short keys keep Redis memory per pending event small (DESIGN.md: ≈ 473 B with a 300-byte body).
"""

from __future__ import annotations

from typing import Any

import orjson

from delayline.domain.events import EventStatus, ScheduledEvent, from_epoch_us, to_epoch_us


def encode_event(event: ScheduledEvent) -> bytes:
    """Serialize ``event`` (status excluded: the store knows it)."""
    doc: dict[str, Any] = {
        "i": event.schedule_id,
        "t": event.topic,
        "e": event.entity_type,
        "a": event.action,
        "b": event.body,
        "c": event.correlation_id,
        "s": event.due_us,
        "m": event.max_delay_seconds,
        "p": event.priority,
        "k": to_epoch_us(event.created_at),
    }
    if event.headers:
        doc["h"] = dict(event.headers)
    if event.attempts:
        doc["n"] = event.attempts
    if event.last_error:
        doc["x"] = event.last_error
    return orjson.dumps(doc)


def decode_event(raw: bytes | str, status: EventStatus = EventStatus.PENDING) -> ScheduledEvent:
    """The event serialized by :func:`encode_event`, in ``status``."""
    doc = orjson.loads(raw)
    created = from_epoch_us(doc["k"])
    return ScheduledEvent(
        schedule_id=doc["i"],
        topic=doc["t"],
        entity_type=doc["e"],
        action=doc["a"],
        body=doc["b"],
        correlation_id=doc["c"],
        headers=doc.get("h", {}),
        scheduled_at=from_epoch_us(doc["s"]),
        max_delay_seconds=doc["m"],
        priority=doc["p"],
        status=status,
        created_at=created,
        updated_at=created,
        attempts=doc.get("n", 0),
        last_error=doc.get("x"),
    )

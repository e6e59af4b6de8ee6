"""The scheduled event and :func:`new_event`, which validates every field to build one.
Pure: no I/O.

The field rules, statuses, time conversions and body encodings live in their own modules; their
public names are imported here too, so ``delayline.domain.events`` offers the whole event model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from delayline.domain.event_body import BodyEncoding, body_view, decode_base64, encode_body
from delayline.domain.event_errors import InvalidEventError, OversizeEventError
from delayline.domain.event_fields import (
    MAX_HEADER_BYTES,
    RESERVED_HEADERS,
    check_text,
    reserved_form,
    validate_headers,
    validate_scheduled_at,
    validate_topic,
)
from delayline.domain.event_rules import (
    DEFAULT_EVENT_RULES,
    DEFAULT_MAX_MESSAGE_BYTES,
    HEADER_OVERHEAD_BYTES,
    RECORD_OVERHEAD_BYTES,
    EventRules,
    message_size,
)
from delayline.domain.event_status import (
    ALLOWED_TRANSITIONS,
    TERMINAL_STATUSES,
    EventStatus,
    can_transition,
)
from delayline.domain.limits import SCHEDULE_ID_PATTERN
from delayline.domain.timestamps import as_utc, from_epoch_us, to_epoch_us, utc_now

__all__ = [
    "ALLOWED_TRANSITIONS",
    "DEFAULT_EVENT_RULES",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_DELAY_SECONDS",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "HEADER_OVERHEAD_BYTES",
    "MAX_HEADER_BYTES",
    "RECORD_OVERHEAD_BYTES",
    "RESERVED_HEADERS",
    "TERMINAL_STATUSES",
    "BodyEncoding",
    "EventRules",
    "EventStatus",
    "InvalidEventError",
    "OversizeEventError",
    "ScheduledEvent",
    "as_utc",
    "body_view",
    "can_transition",
    "decode_base64",
    "encode_body",
    "from_epoch_us",
    "message_size",
    "new_event",
    "new_schedule_id",
    "reserved_form",
    "to_epoch_us",
    "utc_now",
    "validate_headers",
    "validate_scheduled_at",
    "validate_topic",
]

DEFAULT_MAX_DELAY_SECONDS = 86400
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
_ID_RE = re.compile(SCHEDULE_ID_PATTERN)
_INT32 = (-(2**31), 2**31 - 1)


def new_schedule_id() -> str:
    """A fresh, unique schedule id: 128 random bits as 32 hex digits (the shape of a uuid4's
    hex, without the cost of building a ``UUID`` on the bulk path)."""
    return os.urandom(16).hex()


@dataclass(frozen=True, slots=True)
class ScheduledEvent:
    """One event to publish to ``topic`` at ``scheduled_at`` (a row of ``event_schedules``).

    Build it with :func:`new_event`, which validates every field.
    """

    schedule_id: str
    topic: str
    entity_type: str
    action: str
    body: bytes
    correlation_id: str
    headers: Mapping[str, str]
    scheduled_at: datetime
    max_delay_seconds: int = DEFAULT_MAX_DELAY_SECONDS
    priority: int = 0
    status: EventStatus = EventStatus.PENDING
    created_at: datetime = field(default_factory=utc_now)
    updated_at: datetime = field(default_factory=utc_now)
    attempts: int = 0
    last_error: str | None = None

    @property
    def due_us(self) -> int:
        """Due time in epoch microseconds."""
        return to_epoch_us(self.scheduled_at)

    @property
    def message_key(self) -> str:
        """The Kafka key of the fired message: the correlation id, else the schedule id."""
        return self.correlation_id or self.schedule_id

    def with_status(
        self, status: EventStatus, *, at: datetime, error: str | None = None
    ) -> ScheduledEvent:
        """A copy in ``status``; raises ``ValueError`` for a transition that is not allowed."""
        if status != self.status and not can_transition(self.status, status):
            raise ValueError(f"cannot move event from {self.status} to {status}")
        return replace(self, status=status, updated_at=at, last_error=error or self.last_error)

    def outgoing_headers(self) -> list[tuple[str, bytes]]:
        """The headers of the fired message: the event's own plus the ``x-…`` ones."""
        out = [(k, v.encode()) for k, v in self.headers.items()]
        out += [
            ("x-schedule-id", self.schedule_id.encode()),
            ("x-correlation-id", self.correlation_id.encode()),
            ("x-entity-type", self.entity_type.encode()),
            ("x-action", self.action.encode()),
            ("x-scheduled-at", self.scheduled_at.isoformat().encode()),
        ]
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (for the HTTP API and the CLI); the body as :func:`body_view`
        shows it."""
        body, encoding = body_view(self.body)
        return {
            "schedule_id": self.schedule_id,
            "topic": self.topic,
            "entity_type": self.entity_type,
            "action": self.action,
            "body": body,
            "body_encoding": encoding,
            "correlation_id": self.correlation_id,
            "headers": dict(self.headers),
            "scheduled_at": self.scheduled_at.isoformat(),
            "max_delay_seconds": self.max_delay_seconds,
            "priority": self.priority,
            "status": self.status.value,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "attempts": self.attempts,
            "last_error": self.last_error,
        }


def new_event(
    *,
    topic: object,
    entity_type: object = "",
    action: object = "",
    body: object = b"",
    scheduled_at: object,
    correlation_id: object = None,
    headers: object = None,
    priority: object = 0,
    max_delay_seconds: object = DEFAULT_MAX_DELAY_SECONDS,
    schedule_id: object = None,
    now: datetime | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    rules: EventRules = DEFAULT_EVENT_RULES,
) -> ScheduledEvent:
    """Validate every field and build a pending :class:`ScheduledEvent`.

    Raises :class:`InvalidEventError` naming the first field that is wrong (an
    :class:`OversizeEventError` when the message would be too large to produce).
    """
    sid = new_schedule_id() if schedule_id is None else schedule_id
    if not isinstance(sid, str) or not _ID_RE.fullmatch(sid):
        raise InvalidEventError(
            "schedule_id", "must be 1-200 characters of letters, digits and ._:@/+=-"
        )
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidEventError("priority", f"must be an integer, not {type(priority).__name__}")
    if not _INT32[0] <= priority <= _INT32[1]:
        raise InvalidEventError("priority", "must fit in a signed 32-bit integer")
    if isinstance(max_delay_seconds, bool) or not isinstance(max_delay_seconds, int):
        raise InvalidEventError("max_delay_seconds", "must be an integer")
    if not 0 <= max_delay_seconds <= 2**32 - 1:
        raise InvalidEventError("max_delay_seconds", "must be between 0 and 4294967295")
    stamp = now or utc_now()
    topic = validate_topic(topic)
    rules.check_topic(topic)
    event = ScheduledEvent(
        schedule_id=sid,
        topic=topic,
        entity_type=check_text("entity_type", entity_type),
        action=check_text("action", action),
        body=encode_body(body, max_body_bytes),
        correlation_id=check_text("correlation_id", correlation_id or ""),
        headers=validate_headers(headers),
        scheduled_at=validate_scheduled_at(scheduled_at),
        max_delay_seconds=max_delay_seconds,
        priority=priority,
        created_at=stamp,
        updated_at=stamp,
    )
    rules.check_size(event)
    return event

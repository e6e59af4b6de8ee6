"""The scheduled event, its statuses and their allowed transitions. Pure: no I/O."""

from __future__ import annotations

import base64
import binascii
import fnmatch
import os
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

import orjson

from delayline.domain.limits import (
    EARLIEST_YEAR,
    LATEST_YEAR,
    MAX_TEXT,
    SCHEDULE_ID_PATTERN,
    TOPIC_PATTERN,
)

DEFAULT_MAX_DELAY_SECONDS = 86400
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_MESSAGE_BYTES = 1_000_000
"""librdkafka's default ``message.max.bytes``: the largest record the producer will send."""
RECORD_OVERHEAD_BYTES = 36
"""The most a Kafka v2 record adds to its key, value and headers (length, attributes,
timestamp and offset deltas, key/value lengths, header count: librdkafka's bound)."""
HEADER_OVERHEAD_BYTES = 10
"""The most one record header adds to its name and value (two varint lengths)."""
MAX_HEADER_BYTES = 64 * 1024
RESERVED_HEADERS = (
    "x-schedule-id",
    "x-correlation-id",
    "x-entity-type",
    "x-action",
    "x-scheduled-at",
)
_TOPIC_RE = re.compile(TOPIC_PATTERN)
# RFC 7230 token characters: what a header name may be made of, so that no name can smuggle
# whitespace, control characters or look-alikes of a reserved name.
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")
_ID_RE = re.compile(SCHEDULE_ID_PATTERN)
_INT32 = (-(2**31), 2**31 - 1)


class InvalidEventError(ValueError):
    """The event cannot be scheduled; the message says which field and why."""

    code = "invalid_event"
    """The dead-letter reason code of a Kafka message refused for this."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}")
        self.field = field_name
        self.problem = problem


class OversizeEventError(InvalidEventError):
    """The event would be a Kafka message larger than the producer can send."""

    code = "oversize"


@dataclass(frozen=True, slots=True)
class EventRules:
    """What every ingress accepts beyond each field's own type and format.

    ``max_message_bytes``: the producer's ``message.max.bytes``; an event whose fired message
    (key, body, headers and record overhead) could exceed it is refused, never accepted and then
    failed at fire time. ``own_topics``: Delayline's own topics (delayed, dead-letter), which
    events may not target, like Kafka's internal ``__``-prefixed ones. ``allowed_topics``: when
    not empty, the topic must match one of these glob patterns (``user.*``).
    """

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    own_topics: frozenset[str] = frozenset()
    allowed_topics: tuple[str, ...] = ()

    def check_topic(self, topic: str) -> None:
        """Raise :class:`InvalidEventError` for a topic events may not target."""
        if topic.startswith("__"):
            raise InvalidEventError("topic", f"{topic!r} is an internal Kafka topic")
        if topic in self.own_topics:
            raise InvalidEventError("topic", f"{topic!r} is one of Delayline's own topics")
        if self.allowed_topics and not any(
            fnmatch.fnmatchcase(topic, pattern) for pattern in self.allowed_topics
        ):
            raise InvalidEventError(
                "topic", f"{topic!r} is not in the allowed topics {list(self.allowed_topics)}"
            )

    def check_size(self, event: ScheduledEvent) -> None:
        """Raise :class:`OversizeEventError` if ``event`` could not be produced as one record."""
        if _size_bound(event) <= self.max_message_bytes:
            return  # surely fits: skip the exact count (the common case, on the bulk path)
        size = message_size(event)
        if size > self.max_message_bytes:
            raise OversizeEventError(
                "body",
                f"the event would be a {size}-byte Kafka message (body, key and headers); "
                f"the producer's limit (message.max.bytes) is {self.max_message_bytes}",
            )


DEFAULT_EVENT_RULES = EventRules()


class EventStatus(StrEnum):
    """Where an event is in its life. The terminal ones never change again."""

    PENDING = "pending"  # accepted, waiting in a tier
    QUEUED = "queued"  # moved from ClickHouse into Redis by the sync
    PROCESSING = "processing"  # claimed by a dispatcher under a lease
    COMPLETED = "completed"  # published; the broker acknowledged it
    FAILED = "failed"  # publishing failed past the retry limit, or permanently
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # could first fire later than its max_delay_seconds

    @property
    def is_terminal(self) -> bool:
        """True for statuses an event never leaves."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {EventStatus.COMPLETED, EventStatus.FAILED, EventStatus.CANCELLED, EventStatus.SKIPPED}
)

ALLOWED_TRANSITIONS: Mapping[EventStatus, frozenset[EventStatus]] = {
    EventStatus.PENDING: frozenset(
        {EventStatus.QUEUED, EventStatus.PROCESSING, EventStatus.CANCELLED, EventStatus.SKIPPED}
    ),
    EventStatus.QUEUED: frozenset(
        {EventStatus.PROCESSING, EventStatus.CANCELLED, EventStatus.SKIPPED, EventStatus.PENDING}
    ),
    EventStatus.PROCESSING: frozenset(
        {
            EventStatus.COMPLETED,
            EventStatus.FAILED,
            EventStatus.SKIPPED,
            EventStatus.CANCELLED,
            EventStatus.PENDING,  # retry later, or a lease expired
            EventStatus.QUEUED,
        }
    ),
    EventStatus.COMPLETED: frozenset(),
    EventStatus.FAILED: frozenset(),
    EventStatus.CANCELLED: frozenset(),
    EventStatus.SKIPPED: frozenset(),
}


def can_transition(current: EventStatus, new: EventStatus) -> bool:
    """Whether an event in ``current`` may move to ``new``."""
    return new in ALLOWED_TRANSITIONS[current]


def utc_now() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """An aware UTC datetime; a naive one (``datetime.utcnow()``) is taken as UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise InvalidEventError("scheduled_at", "is out of range") from None


def to_epoch_us(value: datetime) -> int:
    """Microseconds since the epoch, exact (no float rounding)."""
    if value.tzinfo is not UTC:
        value = as_utc(value)
    return (value - _EPOCH) // _ONE_US


def from_epoch_us(value: int) -> datetime:
    """The aware UTC datetime of ``value`` microseconds since the epoch (exact)."""
    if 0 <= value < _FLOAT_EXACT_US:
        # A double holds these to well under half a microsecond and fromtimestamp rounds to
        # the nearest one: exact, and cheaper than building a timedelta (hot path).
        return datetime.fromtimestamp(value / 1e6, UTC)
    return _EPOCH + timedelta(microseconds=value)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_FLOAT_EXACT_US = 2**32 * 1_000_000
"""Below 2**32 s (year 2106) a double is within 0.25 µs of ``value / 1e6``: rounds back exactly."""


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


def _byte_len(value: str | bytes) -> int:
    return len(value) if isinstance(value, bytes) else len(value.encode("utf-8"))


def _size_bound(event: ScheduledEvent) -> int:
    """An upper bound of :func:`message_size` from character counts (4 bytes each at most)."""
    text = (
        len(event.body)
        + len(event.message_key)
        + len(event.schedule_id)
        + len(event.correlation_id)
        + len(event.entity_type)
        + len(event.action)
        + sum(len(k) + len(v) for k, v in event.headers.items())
    )
    fixed = RECORD_OVERHEAD_BYTES + (len(event.headers) + len(RESERVED_HEADERS)) * (
        HEADER_OVERHEAD_BYTES + 16
    )
    return 4 * text + fixed + 64  # 64: the x-scheduled-at value


def message_size(event: ScheduledEvent) -> int:
    """The most bytes the fired record of ``event`` takes against ``message.max.bytes``."""
    headers = sum(
        HEADER_OVERHEAD_BYTES + _byte_len(name) + len(value)
        for name, value in event.outgoing_headers()
    )
    return RECORD_OVERHEAD_BYTES + _byte_len(event.message_key) + _byte_len(event.body) + headers


def _check_text(
    name: str, value: object, *, allow_empty: bool = True, limit: int = MAX_TEXT
) -> str:
    if not isinstance(value, str):
        raise InvalidEventError(name, f"must be a string, not {type(value).__name__}")
    if not allow_empty and not value:
        raise InvalidEventError(name, "must not be empty")
    if len(value) > limit:
        raise InvalidEventError(name, f"is longer than {limit} characters")
    _check_utf8(name, value)
    return value


def _check_utf8(name: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidEventError(name, "contains characters that are not valid UTF-8") from None


def validate_topic(topic: object, field_name: str = "topic") -> str:
    """Apply Kafka's topic-name rules: 1–249 of ``[A-Za-z0-9._-]``, not ``.`` or ``..``."""
    if not isinstance(topic, str):
        raise InvalidEventError(field_name, f"must be a string, not {type(topic).__name__}")
    if topic in {".", ".."} or not _TOPIC_RE.fullmatch(topic):
        raise InvalidEventError(
            field_name,
            f"{topic[:60]!r} is not a valid Kafka topic name "
            "(1-249 characters of letters, digits, '.', '_' and '-'; not '.' or '..')",
        )
    return topic


BodyEncoding = Literal["utf-8", "base64"]
"""How JSON text stands for a body's bytes: its UTF-8 encoding, or standard base64."""


def encode_body(body: object, max_bytes: int) -> bytes:
    """The body as bytes: ``bytes`` as they are, a ``str`` as its UTF-8, a dict or list as
    JSON."""
    if isinstance(body, bytes | bytearray | memoryview):
        data = bytes(body)
    elif isinstance(body, str):
        try:
            data = body.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates
            raise InvalidEventError(
                "body", "contains characters that are not valid UTF-8"
            ) from None
    elif isinstance(body, dict | list):
        try:
            data = orjson.dumps(body)
        except TypeError as exc:
            raise InvalidEventError("body", f"cannot be encoded as JSON: {exc}") from None
    else:
        raise InvalidEventError(
            "body", f"must be str, bytes, dict or list, not {type(body).__name__}"
        )
    if len(data) > max_bytes:
        raise InvalidEventError("body", f"is {len(data)} bytes; the limit is {max_bytes}")
    return data


def decode_base64(text: str) -> bytes:
    """The bytes of standard (RFC 4648, padded) base64 ``text`` — how a JSON document carries
    a binary body; ``ValueError`` for anything else."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64 (RFC 4648 alphabet, with padding)") from None


def body_view(body: bytes) -> tuple[str, BodyEncoding]:
    """``(text, encoding)`` to show ``body`` in JSON: UTF-8 text as itself (``"utf-8"``),
    any other bytes in base64 (``"base64"``)."""
    try:
        return body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), "base64"


def reserved_form(name: str) -> str:
    """``name`` as it is compared with the reserved names: NFKC, stripped, case-folded."""
    return unicodedata.normalize("NFKC", name).strip().casefold()


def validate_headers(headers: object) -> dict[str, str]:
    """String keys and values, names of RFC 7230 token characters, none reserved (compared
    after normalisation, so no look-alike passes), at most 64 KiB in all."""
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise InvalidEventError("headers", f"must be a mapping, not {type(headers).__name__}")
    out: dict[str, str] = {}
    total = 0
    for key, value in headers.items():
        if not isinstance(key, str) or not key:
            raise InvalidEventError("headers", f"key {key!r} must be a non-empty string")
        if not isinstance(value, str):
            raise InvalidEventError(
                "headers", f"value of {key!r} must be a string, not {type(value).__name__}"
            )
        if reserved_form(key) in RESERVED_HEADERS:
            raise InvalidEventError(
                "headers", f"{key!r} is reserved; it is set when the event fires"
            )
        if not _HEADER_NAME_RE.fullmatch(key):
            raise InvalidEventError(
                "headers",
                f"name {key[:60]!r} must be 1-256 token characters "
                "(letters, digits and !#$%&'*+-.^_`|~)",
            )
        _check_utf8("headers", key)
        _check_utf8("headers", value)
        total += len(key) + len(value)
        out[key] = value
    if total > MAX_HEADER_BYTES:
        raise InvalidEventError("headers", f"are {total} bytes; the limit is {MAX_HEADER_BYTES}")
    return out


def validate_scheduled_at(value: object) -> datetime:
    """An aware UTC datetime (naive values are UTC); ISO-8601 text is accepted too."""
    if isinstance(value, str):
        text = value
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidEventError(
                "scheduled_at", f"{text[:60]!r} is not an ISO-8601 date-time"
            ) from None
    if not isinstance(value, datetime):
        raise InvalidEventError("scheduled_at", f"must be a datetime, not {type(value).__name__}")
    value = as_utc(value)
    if not EARLIEST_YEAR <= value.year <= LATEST_YEAR:
        raise InvalidEventError(
            "scheduled_at", f"{value.isoformat()} is outside {EARLIEST_YEAR}-{LATEST_YEAR}"
        )
    return value


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
        entity_type=_check_text("entity_type", entity_type),
        action=_check_text("action", action),
        body=encode_body(body, max_body_bytes),
        correlation_id=_check_text("correlation_id", correlation_id or ""),
        headers=validate_headers(headers),
        scheduled_at=validate_scheduled_at(scheduled_at),
        max_delay_seconds=max_delay_seconds,
        priority=priority,
        created_at=stamp,
        updated_at=stamp,
    )
    rules.check_size(event)
    return event

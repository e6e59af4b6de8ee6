"""One delayed-topic message → schedule, cancel or reject (with a reason). Pure: no I/O.

The three accepted forms and every rule below are documented in ``docs/INGRESS.md``.
A rejection reason reads ``<code>: <detail>``; the code is one of ``missing_header``,
``invalid_header``, ``duplicate_header``, ``invalid_utf8``, ``oversize``, ``ambiguous``,
``invalid_envelope``, ``invalid_event``, ``invalid_key`` (and, from the consumer,
``store_rejected``, ``internal_error``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from delayline.domain.events import (
    InvalidEventError,
    ScheduledEvent,
    decode_base64,
    from_epoch_us,
)
from delayline.domain.limits import due_after
from delayline.domain.wire import (
    CONTROL_HEADERS,
    ENVELOPE_CONTENT_TYPE,
    ETF1_HEADERS,
    H_ACTION,
    H_CONTENT_TYPE,
    H_CORRELATION_ID,
    H_DELAY_SECONDS,
    H_ENTITY_TYPE,
    H_ETF1_EPOCH,
    H_ETF1_TARGET_KEY,
    H_ETF1_TARGET_TOPIC,
    H_MAX_DELAY_SECONDS,
    H_PRIORITY,
    H_SCHEDULE_ID,
    H_SCHEDULED_AT,
    H_TOPIC,
    derive_schedule_id,
)
from delayline.ports import DelayedMessage

MAX_CONTROL_HEADER_BYTES = 1024
# Numbers in headers are ASCII only: int()/float() would also take other scripts' digits
# ('١٢٣' → 123), superscripts' isdigit() ('²') and underscores ('1_000').
_ASCII_INTEGER = re.compile(r"-?[0-9]+")
_ASCII_FRACTION = re.compile(r"[0-9]+\.[0-9]*|\.[0-9]+")
_ASCII_DECIMAL = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_ASCII_SPACE = " \t\r\n"
ENVELOPE_FIELDS = frozenset(
    {"topic", "body", "body_encoding", "delay_seconds", "scheduled_at", "entity_type", "action",
     "correlation_id", "headers", "priority", "max_delay_seconds", "schedule_id"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Schedule:
    """Store this event."""

    event: ScheduledEvent


@dataclass(frozen=True, slots=True)
class Cancel:
    """A tombstone: cancel this schedule id."""

    schedule_id: str


@dataclass(frozen=True, slots=True)
class Reject:
    """Dead-letter the message with this reason."""

    reason: str


Decision = Schedule | Cancel | Reject
BuildEvent = Callable[..., ScheduledEvent]


class Rejected(Exception):
    """The message cannot become an event; ``str()`` is the dead-letter reason."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")


def parse(msg: DelayedMessage, build_event: BuildEvent, now: datetime) -> Decision:
    """Decide what ``msg`` means. ``build_event`` validates (``SchedulerApi.build_event``)."""
    try:
        if msg.header_error is not None:
            raise Rejected("invalid_header", msg.header_error)
        control, passthrough = read_headers(msg.headers)
        key_text = _key_text(msg.key)
        if msg.value is None:
            return _tombstone(control, key_text)
        envelope, passthrough = _split_content_type(passthrough)
        etf1 = ETF1_HEADERS & control.keys()
        native = CONTROL_HEADERS & control.keys()
        if envelope:
            if etf1 or native:
                raise Rejected("ambiguous", "an envelope message must not carry x-*/scheduler-* "
                               f"control headers (found {sorted(etf1 | native)})")  # fmt: skip
            fields = _envelope_fields(msg.value, passthrough, key_text, _base_time(msg, now))
        elif etf1 and native:
            raise Rejected("ambiguous", f"mixes x-* and etf1 scheduler-* headers {sorted(etf1)}")
        elif etf1:
            fields = _etf1_fields(msg, control, passthrough, key_text)
        else:
            fields = _native_fields(msg, control, passthrough, key_text, now)
        if fields.get("schedule_id") is None:
            fields["schedule_id"] = derive_schedule_id(
                msg.topic, msg.partition, msg.offset, msg.timestamp_ms or 0
            )
        try:
            return Schedule(build_event(**fields))
        except InvalidEventError as exc:
            raise Rejected(exc.code, str(exc)) from None
    except Rejected as exc:
        return Reject(str(exc))


def read_headers(
    raw: Sequence[tuple[str, bytes | None]] | None,
) -> tuple[dict[str, str], dict[str, str]]:
    """``(control, passthrough)``: control names lower-cased; any duplicate name is rejected."""
    control: dict[str, str] = {}
    passthrough: dict[str, str] = {}
    for name, value in raw or ():
        low = name.lower()
        is_control = low in CONTROL_HEADERS or low in ETF1_HEADERS
        target, key = (control, low) if is_control else (passthrough, name)
        if key in target:
            raise Rejected("duplicate_header", f"{name!r} appears more than once")
        if value is None:
            if is_control:
                raise Rejected("invalid_header", f"{name!r} has no value")
            text = ""
        else:
            if is_control and len(value) > MAX_CONTROL_HEADER_BYTES:
                raise Rejected(
                    "oversize", f"{name!r} is {len(value)} bytes; the limit is "
                    f"{MAX_CONTROL_HEADER_BYTES}"
                )  # fmt: skip
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                raise Rejected("invalid_utf8", f"header {name!r} is not valid UTF-8") from None
        target[key] = text
    return control, passthrough


def _key_text(key: bytes | None) -> str | None:
    if not key:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _tombstone(control: Mapping[str, str], key_text: str | None) -> Decision:
    sid = control.get(H_SCHEDULE_ID) or key_text
    if not sid:
        raise Rejected("invalid_key", "a tombstone needs a UTF-8 key or an x-schedule-id header")
    return Cancel(sid)


def _split_content_type(passthrough: dict[str, str]) -> tuple[bool, dict[str, str]]:
    for name, value in passthrough.items():
        if name.lower() == H_CONTENT_TYPE:
            if value.split(";")[0].strip().lower() == ENVELOPE_CONTENT_TYPE:
                return True, {k: v for k, v in passthrough.items() if k != name}
            break
    return False, passthrough


def _int(name: str, text: str) -> int:
    digits = text.strip(_ASCII_SPACE)
    if not _ASCII_INTEGER.fullmatch(digits):
        raise Rejected("invalid_header", f"{name}: {text[:60]!r} is not an integer "
                       "(ASCII digits, optional leading -)")  # fmt: skip
    return int(digits)


def _delay(name: str, value: object, base: datetime) -> datetime:
    seconds: object = value
    if isinstance(value, str):
        text = value.strip(_ASCII_SPACE)
        seconds = float(text) if _ASCII_DECIMAL.fullmatch(text) else value
    try:
        return due_after(base, seconds)
    except ValueError as exc:
        raise Rejected("invalid_header", f"{name}: {exc}") from None


def _epoch_number(value: object) -> float | int | None:
    """``value`` as an epoch number (a JSON number, or ASCII digits with an optional
    fraction), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip(_ASCII_SPACE)
        if _ASCII_INTEGER.fullmatch(text) and not text.startswith("-"):
            return int(text)
        if _ASCII_FRACTION.fullmatch(text):
            return float(text)
    return None


def _from_epoch(name: str, value: object, number: float, unit_us: int) -> datetime:
    try:
        return from_epoch_us(round(number * unit_us))
    except (OverflowError, ValueError, OSError):
        raise Rejected("invalid_header", f"{name}: {str(value)[:60]!r} is out of range") from None


def _absolute(name: str, value: object, unit_us: int) -> object:
    """Epoch ``unit_us``-microsecond numbers → datetime; other text is left as ISO-8601."""
    number = _epoch_number(value)
    if number is None:
        if isinstance(value, str) and not value.isascii():
            raise Rejected("invalid_header", f"{name}: {value[:60]!r} is neither epoch "
                           "milliseconds nor an ISO-8601 date-time (ASCII only)")  # fmt: skip
        return value  # ISO-8601 text (build_event validates it) or a wrong type
    return _from_epoch(name, value, number, unit_us)


def _etf1_epoch(text: str) -> datetime:
    """etf1's ``scheduler-epoch``: epoch seconds, nothing else."""
    number = _epoch_number(text)
    if number is None:
        raise Rejected("invalid_header", f"{H_ETF1_EPOCH}: {text[:60]!r} is not epoch seconds "
                       "(ASCII digits, e.g. 1924992000)")  # fmt: skip
    return _from_epoch(H_ETF1_EPOCH, text, number, 1_000_000)


def _when(delay: str | None, at: str | None, base: datetime) -> object:
    if delay is not None and at is not None:
        raise Rejected("ambiguous", f"give {H_DELAY_SECONDS} or {H_SCHEDULED_AT}, not both")
    if delay is not None:
        return _delay(H_DELAY_SECONDS, delay, base)
    if at is None:
        raise Rejected("missing_header", f"{H_DELAY_SECONDS} or {H_SCHEDULED_AT} is required")
    return _absolute(H_SCHEDULED_AT, at, 1000)


def _base_time(msg: DelayedMessage, now: datetime) -> datetime:
    """A delay counts from the message's timestamp (when it was produced), else from now."""
    if msg.timestamp_ms and msg.timestamp_ms > 0:
        return datetime.fromtimestamp(msg.timestamp_ms / 1000, UTC)
    return now


def _native_fields(
    msg: DelayedMessage,
    control: Mapping[str, str],
    passthrough: dict[str, str],
    key_text: str | None,
    now: datetime,
) -> dict[str, Any]:
    topic = control.get(H_TOPIC)
    if topic is None:
        raise Rejected("missing_header", f"{H_TOPIC} (the target topic) is required")
    fields: dict[str, Any] = {
        "topic": topic,
        "scheduled_at": _when(
            control.get(H_DELAY_SECONDS), control.get(H_SCHEDULED_AT), _base_time(msg, now)
        ),
        "entity_type": control.get(H_ENTITY_TYPE, ""),
        "action": control.get(H_ACTION, ""),
        "body": msg.value,
        "correlation_id": control.get(H_CORRELATION_ID) or key_text,
        "headers": passthrough,
        "schedule_id": control.get(H_SCHEDULE_ID) or None,
    }
    if H_PRIORITY in control:
        fields["priority"] = _int(H_PRIORITY, control[H_PRIORITY])
    if H_MAX_DELAY_SECONDS in control:
        fields["max_delay_seconds"] = _int(H_MAX_DELAY_SECONDS, control[H_MAX_DELAY_SECONDS])
    return fields


def _etf1_fields(
    msg: DelayedMessage,
    control: Mapping[str, str],
    passthrough: dict[str, str],
    key_text: str | None,
) -> dict[str, Any]:
    for name in (H_ETF1_TARGET_TOPIC, H_ETF1_EPOCH):
        if name not in control:
            raise Rejected("missing_header", f"{name} is required with etf1 scheduler-* headers")
    if msg.key and key_text is None:
        raise Rejected("invalid_key", "the key (the etf1 schedule id) is not valid UTF-8")
    return {
        "topic": control[H_ETF1_TARGET_TOPIC],
        "scheduled_at": _etf1_epoch(control[H_ETF1_EPOCH]),
        "body": msg.value,
        "correlation_id": control.get(H_ETF1_TARGET_KEY) or None,
        "headers": passthrough,
        # etf1 names a schedule by the message key: a tombstone with that key cancels it.
        "schedule_id": key_text,
    }


def _envelope_fields(
    value: bytes, passthrough: dict[str, str], key_text: str | None, base: datetime
) -> dict[str, Any]:
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise Rejected("invalid_envelope", f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise Rejected("invalid_envelope", f"must be a JSON object, not {type(doc).__name__}")
    unknown = doc.keys() - ENVELOPE_FIELDS
    if unknown:
        raise Rejected("invalid_envelope", f"unknown field(s) {sorted(unknown)}")
    if "topic" not in doc:
        raise Rejected("invalid_envelope", "topic is required")
    delay, at = doc.get("delay_seconds"), doc.get("scheduled_at")
    if (delay is None) == (at is None):
        raise Rejected("invalid_envelope", "give exactly one of delay_seconds and scheduled_at")
    when = _delay("delay_seconds", delay, base) if delay is not None else None
    headers = doc.get("headers")
    if headers is None:
        headers = passthrough
    elif isinstance(headers, dict):
        headers = {**passthrough, **headers}
    fields: dict[str, Any] = {
        "topic": doc["topic"],
        "scheduled_at": when or _absolute("scheduled_at", at, 1000),
        "entity_type": doc.get("entity_type", ""),
        "action": doc.get("action", ""),
        "body": _envelope_body(doc.get("body"), doc.get("body_encoding")),
        "correlation_id": doc.get("correlation_id") or key_text,
        "headers": headers,
        "schedule_id": doc.get("schedule_id"),
    }
    for name in ("priority", "max_delay_seconds"):
        if doc.get(name) is not None:
            fields[name] = doc[name]
    return fields


def _envelope_body(body: object, encoding: object) -> object:
    """The body as ``build_event`` takes it: with ``body_encoding: "base64"`` the bytes a
    base64 string stands for; else (``"utf-8"``, the default) a string, object or array as is,
    ``null`` as nothing and another JSON value as its JSON text."""
    if encoding == "base64":
        if not isinstance(body, str):
            raise Rejected(
                "invalid_envelope", 'body must be a base64 string with body_encoding "base64"'
            )
        try:
            return decode_base64(body)
        except ValueError as exc:
            raise Rejected("invalid_envelope", f"body {exc}") from None
    if encoding not in (None, "utf-8"):
        raise Rejected(
            "invalid_envelope",
            f'body_encoding must be "utf-8" or "base64", not {str(encoding)[:60]!r}',
        )
    if body is None:
        return b""
    if isinstance(body, str | dict | list):
        return body
    return orjson.dumps(body)

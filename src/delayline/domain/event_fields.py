"""The rules of an event's text fields: topic, free text, headers, due time. Pure: no I/O."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from datetime import datetime

from delayline.domain.event_errors import InvalidEventError
from delayline.domain.limits import EARLIEST_YEAR, LATEST_YEAR, MAX_TEXT, TOPIC_PATTERN
from delayline.domain.timestamps import as_utc

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


def check_text(name: str, value: object, *, allow_empty: bool = True, limit: int = MAX_TEXT) -> str:
    """``value`` if it is a string of at most ``limit`` characters, all valid UTF-8."""
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

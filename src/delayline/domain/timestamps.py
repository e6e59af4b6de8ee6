"""Aware UTC datetimes and their exact epoch-microsecond form. Pure: no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from delayline.domain.event_errors import InvalidEventError


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

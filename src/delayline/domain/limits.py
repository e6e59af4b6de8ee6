"""The limits every entry point (HTTP API, Kafka ingress, the Python API, the CLI) applies to
an event, and the one rule turning a delay into a due time.

A delay is a finite number of seconds, 0 or more, at most :data:`MAX_DELAY_SECONDS`; a due
time falls in the years :data:`EARLIEST_YEAR` to :data:`LATEST_YEAR`.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

SCHEDULE_ID_PATTERN = r"^[A-Za-z0-9._:@/+=-]{1,200}$"
TOPIC_PATTERN = r"^[A-Za-z0-9._-]{1,249}$"
MAX_TEXT = 1024  # characters of a correlation id, entity type, action or filter
EARLIEST_YEAR = 1970
LATEST_YEAR = 2999
# A century: a longer delay is a unit mistake, not a plan (and now + delay stays a datetime).
MAX_DELAY_SECONDS = 100 * 366 * 86400


def due_after(now: datetime, delay_seconds: object) -> datetime:
    """``now`` plus ``delay_seconds`` (a real number within the limits), in UTC.

    ``ValueError`` says why a delay is refused; ``bool`` is not a number here.
    """
    seconds = math.nan
    if isinstance(delay_seconds, int | float) and not isinstance(delay_seconds, bool):
        seconds = float(delay_seconds)
    if not 0 <= seconds <= MAX_DELAY_SECONDS:  # also false for NaN and infinity
        raise ValueError(
            f"{str(delay_seconds)[:60]!r} is not a number of seconds between 0 and "
            f"{MAX_DELAY_SECONDS}"
        )
    base = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    due = base + timedelta(seconds=seconds)
    if due.year > LATEST_YEAR:
        raise ValueError(f"due after the year {LATEST_YEAR}")
    return due

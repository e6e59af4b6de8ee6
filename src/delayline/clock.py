"""Clocks: the system's, and a manual one that tests move by hand."""

from __future__ import annotations

from datetime import datetime, timedelta

from delayline.domain.events import as_utc, utc_now


class SystemClock:
    """The real wall clock, UTC."""

    def now(self) -> datetime:
        """The current time, aware, UTC."""
        return utc_now()


class ManualClock:
    """A clock that stands still until moved: time-based logic tested without sleeping."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = as_utc(start) if start else utc_now()

    def now(self) -> datetime:
        """The clock's current time."""
        return self._now

    def advance(self, seconds: float) -> datetime:
        """Move forward by ``seconds``; returns the new time."""
        self._now += timedelta(seconds=seconds)
        return self._now

    def set(self, when: datetime) -> None:
        """Jump to ``when``."""
        self._now = as_utc(when)

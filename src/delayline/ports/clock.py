"""Wall-clock time as a port."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol


class Clock(Protocol):
    """Wall-clock time, injectable so time-based logic is testable without sleeping."""

    def now(self) -> datetime:
        """The current time, aware, UTC."""
        ...

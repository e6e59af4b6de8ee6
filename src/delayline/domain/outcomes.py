"""What happened when an event's time came: the row behind every analytics figure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from delayline.domain.events import ScheduledEvent, to_epoch_us


class Outcome(StrEnum):
    """The spec's ``schedule_execution_results.status`` values."""

    SUCCESS = "success"
    ERROR = "error"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    """One attempt's end: fired, failed for good, timed out, or skipped as too late."""

    execution_id: str
    event: ScheduledEvent
    executed_at: datetime
    outcome: Outcome
    error_message: str | None
    retry_count: int
    processing_time_ms: int
    node_id: str

    @property
    def delay_seconds(self) -> float:
        """Lateness: how long after its due time the event was executed."""
        return (to_epoch_us(self.executed_at) - self.event.due_us) / 1_000_000

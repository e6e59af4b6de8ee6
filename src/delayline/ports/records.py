"""Where execution results and lifecycle transitions go, and how they are read back."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal, Protocol

from delayline.domain.audit import AuditEntry, AuditQuery
from delayline.domain.outcomes import EventFilter, ExecutionResult, LifecycleEntry

Granularity = Literal["hour", "day"]
"""The bucket of the performance metrics."""


class OutcomeSink(Protocol):
    """Receives every execution result; must never block or fail the dispatcher."""

    def record(self, result: ExecutionResult) -> None:
        """Take one result (buffered; written later, off the firing path)."""
        ...


class LifecycleSink(Protocol):
    """Receives every transition of every event; must never block or fail its caller.

    May be called from any thread (the dispatcher may run on its own event loop)."""

    def transition(self, entry: LifecycleEntry) -> None:
        """Take one transition (buffered; written later, off the firing path)."""
        ...


class LifecycleStore(Protocol):
    """Where transitions are stored and read back from."""

    async def write_entries(self, entries: Sequence[LifecycleEntry]) -> None:
        """Write one batch; raise if it was not written."""
        ...

    async def history(self, schedule_id: str) -> list[LifecycleEntry]:
        """One event's stored transitions, oldest first."""
        ...

    async def histories(self, ids: Sequence[str]) -> dict[str, list[LifecycleEntry]]:
        """The stored transitions of each of ``ids``, oldest first."""
        ...

    async def find(self, match: EventFilter, *, after: str = "", limit: int = 100) -> list[str]:
        """Ids of matching events in id order after ``after``, at most ``limit``."""
        ...


class AuditStore(Protocol):
    """Where audit entries are stored and read back from."""

    async def write_entries(self, entries: Sequence[AuditEntry]) -> None:
        """Write one batch; raise if it was not written."""
        ...

    async def find(self, query: AuditQuery) -> list[AuditEntry]:
        """The matching entries in id order (time order), at most ``query.limit``."""
        ...


class ResultWriter(Protocol):
    """Where batches of execution results are stored."""

    async def write_results(self, results: Sequence[ExecutionResult]) -> None:
        """Write one batch; raise if it was not written."""
        ...


class AnalyticsReader(Protocol):
    """The read side of the stored execution results."""

    async def verify_schema(self) -> None:
        """Raise unless the analytics tables exist."""
        ...

    async def performance(
        self,
        start: datetime,
        end: datetime,
        *,
        entity_type: str | None = None,
        action: str | None = None,
        topic: str | None = None,
        granularity: Granularity = "hour",
        tenant: str | None = None,
    ) -> list[dict[str, Any]]:
        """Metrics per hour or day and (entity_type, action, topic) of ``tenant`` (None:
        every tenant)."""
        ...

    async def summary(
        self, start: datetime, end: datetime, *, tenant: str | None = None
    ) -> dict[str, Any]:
        """Totals, success rate, lateness percentiles, top failing pairs of ``tenant``
        (None: every tenant)."""
        ...

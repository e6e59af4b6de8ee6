"""What the entry points (HTTP API, Kafka consumer, CLI) need from the services."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from delayline.domain.events import ScheduledEvent
from delayline.domain.outcomes import EventFilter, LifecycleEntry
from delayline.ports.records import Granularity
from delayline.ports.stores import Upserted


class SchedulerApi(Protocol):
    """What the ingress adapters (HTTP, Kafka consumer, CLI) need from the scheduler service."""

    def build_event(self, **fields: Any) -> ScheduledEvent:
        """Validate fields into an event (raises ``InvalidEventError``), using the settings'
        body-size limit and default ``max_delay_seconds``."""
        ...

    async def schedule_events(
        self, events: Sequence[ScheduledEvent], source: str = "api"
    ) -> list[bool]:
        """Store validated events in their tier, durably; True where new (False: id existed).

        ``source`` (api, http, kafka) labels the scheduling metrics."""
        ...

    async def upsert_events(
        self, events: Sequence[ScheduledEvent], revisions: Sequence[str], source: str = "api"
    ) -> list[Upserted]:
        """Store each event as its id's current version, in order, in its tier, durably;
        ``revisions`` tell a redelivered or older version from a newer one."""
        ...

    async def replace(self, event: ScheduledEvent, source: str = "api") -> Upserted:
        """Replace whatever state ``event``'s id is in (an identical version: unchanged)."""
        ...

    async def cancel_event(self, schedule_id: str) -> bool:
        """Cancel a pending event in whichever tier it is."""
        ...

    async def reschedule_event(self, schedule_id: str, scheduled_at: datetime) -> bool:
        """Move a pending event to a new time (possibly to the other tier)."""
        ...

    async def get_event(self, schedule_id: str) -> ScheduledEvent | None:
        """The event with its status, from whichever tier holds it."""
        ...

    async def get_history(self, schedule_id: str) -> list[LifecycleEntry]:
        """Every recorded transition of the event, oldest first."""
        ...

    async def find_events(
        self, match: EventFilter, *, after: str = "", limit: int = 100
    ) -> list[ScheduledEvent]:
        """Events matching ``match`` in either tier, in id order after the id ``after``."""
        ...

    async def cancel_by_key(self, correlation_id: str) -> dict[str, int]:
        """Cancel every pending event with the correlation id; how many per tier."""
        ...

    async def reschedule_by_key(
        self, correlation_id: str, scheduled_at: datetime
    ) -> dict[str, int]:
        """Move every pending event with the correlation id; how many per tier."""
        ...

    async def get_stats(self) -> dict[str, Any]:
        """Pending per tier, counts per status, next due times, sync lag."""
        ...

    async def sync_clickhouse_to_redis(self) -> int:
        """Run the sync now; returns how many events it moved."""
        ...

    async def cleanup_old_schedules(self) -> int:
        """Run the cleanup now; returns how many rows/keys it removed."""
        ...


class AnalyticsApi(Protocol):
    """What the HTTP API needs from the analytics service."""

    async def get_performance_metrics(
        self,
        start_date: datetime,
        end_date: datetime,
        entity_type: str | None = None,
        action: str | None = None,
        topic: str | None = None,
        granularity: Granularity = "hour",
        tenant: str | None = None,
    ) -> list[dict[str, Any]]:
        """Rows of the performance metrics, per hour or per day, in ``[start, end)``, of
        ``tenant``'s executions (None: every tenant's)."""
        ...

    async def get_summary(
        self, start_date: datetime, end_date: datetime, tenant: str | None = None
    ) -> dict[str, Any]:
        """Totals, success rate, lateness percentiles, top failing entity types/actions, of
        ``tenant``'s executions (None: every tenant's)."""
        ...


class SyncRunner(Protocol):
    """The ClickHouse → Redis sync and the cleanup, run on demand."""

    async def sync_once(self) -> int:
        """Move due-soon events into Redis; returns how many."""
        ...

    async def cleanup_once(self) -> int:
        """Remove expired schedules and orphans; returns how many."""
        ...

    def stats(self) -> dict[str, Any]:
        """Last run time, lag, totals."""
        ...


class HealthCheck(Protocol):
    """Each dependency's state (redis, clickhouse, kafka, each breaker) and ``serving``."""

    async def check(self) -> dict[str, Any]:
        """A JSON-ready report with at least ``serving: bool``."""
        ...


class KeyRotator(Protocol):
    """Re-seals stored payloads with the current keys, in the background."""

    def begin(self) -> dict[str, Any]:
        """Start a rotation unless one runs; its status."""
        ...

    def report(self) -> dict[str, Any]:
        """The status of the last or running rotation."""
        ...

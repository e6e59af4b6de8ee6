"""The Python API: ``scheduler_service`` and ``ScheduleAnalyticsService()``, importable freely.

    from delayline import scheduler_service
    await scheduler_service.start()                    # roles schedule, fire, sync
    schedule_id = await scheduler_service.schedule_event(topic=..., scheduled_at=...)

``start()`` reads the ``SCHEDULES_*`` settings (or takes a :class:`Settings`) and builds the
composition root in this process. By default it schedules, fires and syncs (so an event scheduled
from Python fires with nothing else running), without the HTTP API or the Kafka consumer. A web
app that only schedules, next to a ``delayline serve --roles fire,sync``, passes
``roles={"schedule"}`` (or sets ``SCHEDULES_ROLES=schedule``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from delayline.adapters.clickhouse.analytics_store import ClickHouseAnalyticsStore
from delayline.adapters.clickhouse.client import ClickHouseClient
from delayline.bootstrap import Application
from delayline.domain.events import ScheduledEvent
from delayline.domain.outcomes import EventFilter, LifecycleEntry
from delayline.ports import Granularity, Upserted
from delayline.roles import PYTHON_API_ROLES, Role
from delayline.services.analytics import ScheduleAnalyticsService as AnalyticsReads
from delayline.services.scheduler import SchedulerService
from delayline.settings import Settings, load_settings


class PythonSchedulerService:
    """The scheduler for in-process callers: built and connected on :meth:`start`."""

    def __init__(self) -> None:
        self._app: Application | None = None

    async def start(
        self, settings: Settings | None = None, *, roles: Iterable[str] | None = None
    ) -> None:
        """Connect (starting embedded servers if no URLs are set) and start the loops of
        ``roles`` (default: ``SCHEDULES_ROLES`` when set, else schedule, fire and sync)."""
        if self._app is not None:
            return
        settings = settings or load_settings()
        if roles is None and "roles" not in settings.model_fields_set:
            roles = PYTHON_API_ROLES
        if "firing_runtime" not in settings.model_fields_set:
            # In the caller's process the dispatcher takes a thread: a spawned child would
            # import the caller's main module again.
            settings = settings.model_copy(update={"firing_runtime": "thread"})
        app = Application(settings, roles=roles)
        await app.start()
        self._app = app

    async def stop(self) -> None:
        """Drain in-flight work and disconnect (idempotent)."""
        if self._app is not None:
            app, self._app = self._app, None
            await app.stop()

    @property
    def started(self) -> bool:
        """Whether :meth:`start` has run (and :meth:`stop` not since)."""
        return self._app is not None

    @property
    def roles(self) -> frozenset[Role]:
        """The roles this process runs (empty before :meth:`start`)."""
        return self._app.roles if self._app is not None else frozenset()

    @property
    def clickhouse(self) -> ClickHouseClient | None:
        """The running application's ClickHouse connection (None before :meth:`start`)."""
        return self._app.wired.clickhouse if self._app is not None else None

    @property
    def service(self) -> SchedulerService:
        """The started service (needs the ``schedule`` role)."""
        if self._app is None:
            raise RuntimeError(
                "scheduler_service is not started: `await scheduler_service.start()`"
            )
        return self._app.service

    async def schedule_event(
        self,
        *,
        topic: str,
        entity_type: str = "",
        action: str = "",
        body: Any = "",
        scheduled_at: datetime | str | None = None,
        correlation_id: str | None = None,
        headers: dict[str, str] | None = None,
        priority: int = 0,
        max_delay_seconds: int | None = None,
        schedule_id: str | None = None,
        delay_seconds: float | None = None,
    ) -> str:
        """Schedule one event; returns its schedule_id (the same id twice is one event)."""
        return await self.service.schedule_event(
            topic=topic,
            entity_type=entity_type,
            action=action,
            body=body,
            scheduled_at=scheduled_at,
            correlation_id=correlation_id,
            headers=headers,
            priority=priority,
            max_delay_seconds=max_delay_seconds,
            schedule_id=schedule_id,
            delay_seconds=delay_seconds,
        )

    async def schedule_bulk(self, items: Sequence[dict[str, Any]]) -> list[str]:
        """Validate and schedule many events in one call; returns their ids in order."""
        return await self.service.schedule_bulk(items)

    async def schedule_events(self, events: Sequence[ScheduledEvent]) -> list[bool]:
        """Store validated events; True where new, False where the id exists."""
        return await self.service.schedule_events(events, "api")

    async def replace_event(self, *, schedule_id: str, **fields: Any) -> Upserted:
        """Replace whatever state ``schedule_id`` is in with the fields of
        :meth:`schedule_event`."""
        return await self.service.replace_event(schedule_id=schedule_id, **fields)

    async def reschedule_event(self, schedule_id: str, scheduled_at: datetime | str) -> bool:
        """Move a pending event to ``scheduled_at``; False when it is not pending."""
        return await self.service.reschedule_event(schedule_id, scheduled_at)

    async def cancel_event(self, schedule_id: str) -> bool:
        """Cancel a pending event in either tier; False when it is not pending."""
        return await self.service.cancel_event(schedule_id)

    async def get_event(self, schedule_id: str) -> ScheduledEvent | None:
        """The whole record of an event at any stage (None when unknown)."""
        return await self.service.get_event(schedule_id)

    async def get_history(self, schedule_id: str) -> list[LifecycleEntry]:
        """Every transition of an event, oldest first."""
        return await self.service.get_history(schedule_id)

    async def find_events(
        self, match: EventFilter, *, after: str = "", limit: int = 100
    ) -> list[ScheduledEvent]:
        """Events matching ``match``, in id order after ``after``."""
        return await self.service.find_events(match, after=after, limit=limit)

    async def cancel_by_key(self, correlation_id: str) -> dict[str, int]:
        """Cancel every pending event of ``correlation_id``; counts per tier."""
        return await self.service.cancel_by_key(correlation_id)

    async def reschedule_by_key(
        self, correlation_id: str, scheduled_at: datetime | str
    ) -> dict[str, int]:
        """Move every pending event of ``correlation_id``; counts per tier."""
        return await self.service.reschedule_by_key(correlation_id, scheduled_at)

    async def get_stats(self) -> dict[str, Any]:
        """Pending and processing counts per tier, the next due time, the sync's state."""
        return await self.service.get_stats()

    async def sync_clickhouse_to_redis(self) -> int:
        """Run one ClickHouse → Redis sync now; how many events moved."""
        return await self.service.sync_clickhouse_to_redis()

    async def cleanup_old_schedules(self) -> int:
        """Run one cleanup of finished schedules now; how many rows went."""
        return await self.service.cleanup_old_schedules()


scheduler_service = PythonSchedulerService()


class ScheduleAnalyticsService:
    """Analytics reads wired from the settings: ``ScheduleAnalyticsService()``, then
    ``await initialize()``.

    ``initialize()`` reuses the ClickHouse connection of ``scheduler_service`` when it runs in
    this process (an embedded chDB folder can be open in one process only), else opens its own
    from the ``SCHEDULES_*`` settings.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings
        self._reads: AnalyticsReads | None = None
        self._own_client: ClickHouseClient | None = None

    async def initialize(self) -> None:
        """Connect (or reuse the running service's connection) and check the schema."""
        settings = self._settings or load_settings()
        client = scheduler_service.clickhouse
        if client is None:
            client = self._own_client = ClickHouseClient(
                settings.resolved_clickhouse_dsn,
                settings.clickhouse_database,
                settings.clickhouse_cluster,
            )
            await client.start()
        self._reads = AnalyticsReads(
            ClickHouseAnalyticsStore(client), enabled=settings.analytics_enabled
        )
        await self._reads.initialize()

    @property
    def reads(self) -> AnalyticsReads:
        """The initialized analytics reads."""
        if self._reads is None:
            raise RuntimeError("ScheduleAnalyticsService is not initialized: await initialize()")
        return self._reads

    async def get_performance_metrics(
        self,
        start_date: datetime,
        end_date: datetime,
        entity_type: str | None = None,
        action: str | None = None,
        topic: str | None = None,
        granularity: Granularity = "hour",
    ) -> list[dict[str, Any]]:
        """Fired events per period and dimension, with success rate and lateness."""
        return await self.reads.get_performance_metrics(
            start_date,
            end_date,
            entity_type=entity_type,
            action=action,
            topic=topic,
            granularity=granularity,
        )

    async def get_summary(self, start_date: datetime, end_date: datetime) -> dict[str, Any]:
        """Totals over the range: success rate, lateness percentiles."""
        return await self.reads.get_summary(start_date, end_date)

    async def close(self) -> None:
        """Close the connection this service opened itself (if any)."""
        if self._reads is not None:
            await self._reads.close()
            self._reads = None
        if self._own_client is not None:
            await self._own_client.stop()
            self._own_client = None

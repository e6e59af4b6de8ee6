"""The spec's ``ScheduleAnalyticsService()`` with no arguments.

    from delayline.services.analytics_service import ScheduleAnalyticsService
    analytics = ScheduleAnalyticsService()
    await analytics.initialize()
    metrics = await analytics.get_performance_metrics(start_date=..., end_date=...)

``initialize()`` reuses the ClickHouse connection of ``scheduler_service`` when it runs in this
process (an embedded chDB folder can be open in one process only), else opens its own from the
``SCHEDULES_*`` settings.
"""

from __future__ import annotations

from typing import cast

from delayline.adapters.clickhouse.analytics_store import ClickHouseAnalyticsStore
from delayline.adapters.clickhouse.client import ClickHouseClient
from delayline.services.analytics import AnalyticsQueries
from delayline.services.analytics import ScheduleAnalyticsService as _Service
from delayline.services.scheduler_service import scheduler_service
from delayline.settings import Settings, load_settings


class ScheduleAnalyticsService(_Service):
    """Analytics reads wired from the settings; see the module docstring."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings
        self._own_client: ClickHouseClient | None = None
        super().__init__(cast(AnalyticsQueries, _Unconnected()), enabled=True)

    async def initialize(self) -> None:
        """Connect (or reuse the running service's connection) and check the schema."""
        settings = self._settings or load_settings()
        self.enabled = settings.analytics_enabled
        client = scheduler_service.clickhouse
        if client is None:
            client = self._own_client = ClickHouseClient(
                settings.resolved_clickhouse_dsn, settings.clickhouse_database
            )
            await client.start()
        self._queries = ClickHouseAnalyticsStore(client)
        await super().initialize()

    async def close(self) -> None:
        """Close the connection this service opened itself (if any)."""
        await super().close()
        if self._own_client is not None:
            await self._own_client.stop()
            self._own_client = None


class _Unconnected:
    """Stands in until ``initialize()``: every read says so clearly."""

    def __getattr__(self, name: str) -> object:
        raise RuntimeError("ScheduleAnalyticsService is not initialized: await initialize()")

"""The spec's module-level ``scheduler_service``: import it freely, it connects in ``start()``.

    from delayline.services.scheduler_service import scheduler_service
    await scheduler_service.start()
    schedule_id = await scheduler_service.schedule_event(topic=..., scheduled_at=...)

``start()`` reads the ``SCHEDULES_*`` settings (or takes a :class:`Settings`) and runs the
dispatcher and the sync in the background, without the HTTP API or the Kafka consumer.
"""

from __future__ import annotations

from typing import Any

from delayline.adapters.clickhouse.client import ClickHouseClient
from delayline.bootstrap import Application, Components
from delayline.services.scheduler import SchedulerService
from delayline.settings import Settings, load_settings


class LazySchedulerService:
    """A :class:`SchedulerService` that is built and connected on ``start()``."""

    def __init__(self) -> None:
        self._app: Application | None = None

    async def start(self, settings: Settings | None = None) -> None:
        """Connect (starting embedded servers if no URLs are set) and start the loops."""
        if self._app is not None:
            return
        settings = settings or load_settings()
        if "firing_runtime" not in settings.model_fields_set:
            # In the caller's process the dispatcher takes a thread: a spawned child would
            # import the caller's main module again.
            settings = settings.model_copy(update={"firing_runtime": "thread"})
        app = Application(settings, components=Components(consumer=False, api=False))
        await app.start()
        self._app = app

    async def stop(self) -> None:
        """Drain in-flight work and disconnect (idempotent)."""
        if self._app is not None:
            app, self._app = self._app, None
            await app.stop()

    @property
    def clickhouse(self) -> ClickHouseClient | None:
        """The running application's ClickHouse connection (None before ``start()``)."""
        return self._app.clickhouse if self._app is not None else None

    @property
    def service(self) -> SchedulerService:
        """The started service."""
        if self._app is None:
            raise RuntimeError(
                "scheduler_service is not started: `await scheduler_service.start()`"
            )
        return self._app.service

    def __getattr__(self, name: str) -> Any:
        return getattr(self.service, name)


scheduler_service = LazySchedulerService()

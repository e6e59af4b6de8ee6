"""Delayline: a hybrid delayed-event scheduler that fires to Kafka on time.

``from delayline import scheduler_service, ScheduleAnalyticsService`` is the Python API (see
:mod:`delayline.python_api`); it is imported on first use, so ``import delayline`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from delayline.python_api import ScheduleAnalyticsService, scheduler_service

__version__ = "0.1.0"
__all__ = ["ScheduleAnalyticsService", "__version__", "scheduler_service"]


def __getattr__(name: str) -> object:
    if name in ("scheduler_service", "ScheduleAnalyticsService"):
        from delayline import python_api

        return getattr(python_api, name)
    raise AttributeError(f"module 'delayline' has no attribute {name!r}")

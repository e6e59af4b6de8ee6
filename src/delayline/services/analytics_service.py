"""``from delayline.services.analytics_service import ScheduleAnalyticsService`` keeps working:
the class lives in :mod:`delayline.python_api` (``from delayline import
ScheduleAnalyticsService``)."""

from delayline.python_api import ScheduleAnalyticsService

__all__ = ["ScheduleAnalyticsService"]

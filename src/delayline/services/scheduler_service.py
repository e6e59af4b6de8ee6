"""``from delayline.services.scheduler_service import scheduler_service`` keeps working: the
object lives in :mod:`delayline.python_api` (``from delayline import scheduler_service``)."""

from delayline.python_api import PythonSchedulerService, scheduler_service

__all__ = ["PythonSchedulerService", "scheduler_service"]

"""``delayline serve --workers N``: N firing processes beside the serving process.

The serving process stays the front: HTTP API, Kafka ingress, the sync, analytics and chDB
(whose data folder only one process may open). Each worker is a :class:`FiringProcess` running
only a dispatcher, as node ``<node>-w<i>``: it takes its share of the near-term shards by lease
(the workers divide the shards among themselves and with any other node of the deployment),
and sends its results and lifecycle transitions back to the front, which writes them to
ClickHouse, so ClickHouse stays off the firing path and in one process. A worker that dies is
started again by its :class:`FiringProcess`; its shards pass to the others once its leases run
out, and come back when it returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from delayline.firing_process import FiringProcess
from delayline.ports import LifecycleSink, OutcomeSink
from delayline.settings import Settings


class WorkersExceedShardsError(ValueError):
    """More firing workers than shards: some would never own one."""


def check_workers(workers: int, shards: int) -> None:
    """Refuse ``workers`` over ``shards`` with what to do instead."""
    if workers > shards:
        raise WorkersExceedShardsError(
            f"{workers} firing workers need at least {workers} shards, and "
            f"SCHEDULES_REDIS_SHARDS is {shards}: set it to a few times the workers "
            f"(e.g. {4 * workers}) on a new deployment, or run `delayline reshard --to "
            f"{4 * workers}` with every node stopped, then set it"
        )


def worker_node_id(node_id: str, index: int) -> str:
    """The node id worker ``index`` holds its shard leases under."""
    return f"{node_id}-w{index}"


class FiringWorkers:
    """N :class:`FiringProcess` workers, started and drained together."""

    def __init__(
        self,
        settings: Settings,
        workers: int,
        *,
        redis_url: str,
        bootstrap_servers: str,
        sink: OutcomeSink,
        lifecycle: LifecycleSink | None = None,
        on_breaker_change: Callable[[str, str], None] = lambda _name, _state: None,
        on_restart: Callable[[], None] = lambda: None,
    ) -> None:
        check_workers(workers, settings.redis_shards)
        self.workers = [
            FiringProcess(
                settings.model_copy(update={"node_id": worker_node_id(settings.node_id, i)}),
                redis_url=redis_url,
                bootstrap_servers=bootstrap_servers,
                sink=sink,
                lifecycle=lifecycle,
                on_breaker_change=_named(on_breaker_change, f".w{i}"),
                on_restart=on_restart,
            )
            for i in range(workers)
        ]

    @property
    def running(self) -> bool:
        """Whether every worker is up and firing."""
        return all(worker.running for worker in self.workers)

    @property
    def claims_in_flight(self) -> int:
        """Batches claimed and not yet finished, over the workers."""
        return sum(worker.claims_in_flight for worker in self.workers)

    @property
    def restarts(self) -> int:
        """Unexpected worker ends, over the workers."""
        return sum(worker.restarts for worker in self.workers)

    @property
    def breaker_states(self) -> dict[str, str]:
        """Each worker's breakers, named ``<breaker>.w<i>``."""
        return {
            f"{name}.w{i}": state
            for i, worker in enumerate(self.workers)
            for name, state in worker.breaker_states.items()
        }

    @property
    def ownership(self) -> list[dict[str, Any]]:
        """Each running worker's shard ownership status."""
        return [status for worker in self.workers for status in worker.ownership]

    @property
    def pids(self) -> list[int | None]:
        """Each worker's process id (None while it is being started again)."""
        return [worker.pid for worker in self.workers]

    async def start(self) -> None:
        """Start every worker at once; returns once all fire (raises what stopped one)."""
        await asyncio.gather(*(worker.start() for worker in self.workers))

    async def stop(self, timeout: float) -> None:
        """Drain every worker at once (each finishes its claimed batches and hands its shards
        back)."""
        await asyncio.gather(*(worker.stop(timeout) for worker in self.workers))


def _named(callback: Callable[[str, str], None], suffix: str) -> Callable[[str, str], None]:
    return lambda name, state: callback(f"{name}{suffix}", state)

"""Which firing runtime a process runs: its own event-loop thread, one child process, or N
worker processes that share the shards (``SCHEDULES_FIRING_RUNTIME``, ``SCHEDULES_WORKERS``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from delayline.adapters.encryption import PayloadCipher
from delayline.firing_process import FiringProcess
from delayline.firing_runtime import FiringThread, LoopSink
from delayline.firing_workers import FiringWorkers
from delayline.ports import Clock, LifecycleSink, OutcomeSink
from delayline.resilience import CircuitBreaker
from delayline.settings import Settings

Firing = FiringThread | FiringProcess | FiringWorkers


def build_firing(
    settings: Settings,
    *,
    redis_url: str,
    bootstrap_servers: str,
    sink: OutcomeSink,
    lifecycle: LifecycleSink,
    clock: Clock,
    breakers: Mapping[str, CircuitBreaker],
    cipher: PayloadCipher | None,
    on_breaker_change: Callable[[str, str], None],
    on_restart: Callable[[], None],
) -> Firing:
    """The runtime the settings ask for, not started. Call it on the loop that feeds ``sink``:
    a child's results arrive there, and the thread hands its results over to it."""
    s = settings
    if s.workers > 1:
        return FiringWorkers(
            s,
            s.workers,
            redis_url=redis_url,
            bootstrap_servers=bootstrap_servers,
            sink=sink,
            lifecycle=lifecycle,
            on_breaker_change=on_breaker_change,
            on_restart=on_restart,
        )
    if s.firing_runtime == "process":
        return FiringProcess(
            s,
            redis_url=redis_url,
            bootstrap_servers=bootstrap_servers,
            sink=sink,
            lifecycle=lifecycle,
            on_breaker_change=on_breaker_change,
            on_restart=on_restart,
        )
    return FiringThread(
        s,
        redis_url=redis_url,
        bootstrap_servers=bootstrap_servers,
        sink=LoopSink(sink, asyncio.get_running_loop()),
        clock=clock,
        redis_breaker=breakers["redis_firing"],
        producer_breaker=breakers["kafka_producer"],
        lifecycle=lifecycle,
        cipher=cipher,
    )

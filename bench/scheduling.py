"""Scenario 1a: bulk scheduling into the Redis tier through ``SchedulerService.schedule_events``.

The timed part includes building and validating every event (``build_event``), which is what a
caller of the bulk Python API pays; the store-only rate is reported beside it.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from bench.common import Result, body_300, near_store
from delayline.clock import SystemClock
from delayline.domain.events import ScheduledEvent
from delayline.services.scheduler import SchedulerService


def build_events(
    service: SchedulerService, n: int, delay_s: float, topic: str, start: int = 0
) -> list[ScheduledEvent]:
    """``n`` validated events with 300-byte bodies, due ``delay_s`` from now."""
    body = body_300()
    due = SystemClock().now() + timedelta(seconds=delay_s)
    return [
        service.build_event(topic=topic, body=body, scheduled_at=due, correlation_id=f"c{i}")
        for i in range(start, start + n)
    ]


async def run(redis_url: str, n: int, chunks: tuple[int, ...] = (1000, 5000)) -> Result:
    """Schedule ``n`` events per chunk size; the best chunk size is the headline figure."""
    runs: list[dict[str, Any]] = []
    for chunk in chunks:
        async with near_store(redis_url) as store:
            service = SchedulerService(store, SystemClock())
            progress: list[list[float]] = []
            build_s = 0.0
            store_s = 0.0
            started = time.perf_counter()
            for offset in range(0, n, chunk):
                t0 = time.perf_counter()
                events = build_events(service, min(chunk, n - offset), 3600, "bench-sched", offset)
                t1 = time.perf_counter()
                inserted = await service.schedule_events(events)
                t2 = time.perf_counter()
                assert all(inserted)
                build_s += t1 - t0
                store_s += t2 - t1
                progress.append([t2 - started, offset + len(events)])
            total = time.perf_counter() - started
            pending = (await store.counts())["pending"]
            assert pending == n, f"{pending} pending, expected {n}"
            runs.append(
                {
                    "chunk": chunk,
                    "events": n,
                    "seconds": total,
                    "events_per_s": n / total,
                    "store_only_events_per_s": n / store_s,
                    "build_share": build_s / total,
                    "progress": progress,
                }
            )
    best = max(runs, key=lambda r: float(r["events_per_s"]))
    return {
        "scenario": "1a bulk scheduling into Redis",
        "events_per_s": best["events_per_s"],
        "best_chunk": best["chunk"],
        "target_events_per_s": 100_000,
        "runs": runs,
    }

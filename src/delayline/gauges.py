"""The loop that keeps the point-in-time gauges fresh: pending events per tier, claims in
flight, the consumer's lag. Each reader is given only when this process runs that part."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

from delayline.metrics import Metrics

log = logging.getLogger(__name__)

GAUGE_INTERVAL_SECONDS = 5.0

Counts = Callable[[], Awaitable[Mapping[str, int]]]


def far_count_interval(took_seconds: float) -> float:
    """Seconds until the next ClickHouse count for the pending gauge: every 5 s while it is
    cheap, else 20× what it took, so it never holds chDB's one query thread more than 5 % of
    the time (a count reads the whole table)."""
    return max(GAUGE_INTERVAL_SECONDS, 20 * took_seconds)


@dataclass(frozen=True)
class GaugeReaders:
    """Where each gauge is read from; None: not run by this process."""

    near_counts: Counts
    far_counts: Counts
    claims_in_flight: Callable[[], int] | None = None
    consumer_lag: Callable[[], int | None] | None = None


async def refresh_gauges(metrics: Metrics, read: GaugeReaders, stopping: asyncio.Event) -> None:
    """Refresh every gauge each :data:`GAUGE_INTERVAL_SECONDS` until ``stopping`` is set; a
    failed read is logged at debug level and tried again next time."""
    far_due = 0.0  # monotonic time of the next ClickHouse count
    while not stopping.is_set():
        try:
            counts = await read.near_counts()
            metrics.set_pending("redis", counts["pending"])
            if time.monotonic() >= far_due:
                started = time.monotonic()
                far_counts = await read.far_counts()
                metrics.set_pending("clickhouse", far_counts["pending"])
                far_due = started + far_count_interval(time.monotonic() - started)
            if read.claims_in_flight is not None:
                metrics.set_claims_in_flight(read.claims_in_flight())
            lag = read.consumer_lag() if read.consumer_lag is not None else None
            if lag is not None:
                metrics.set_consumer_lag(lag)
        except Exception as exc:
            log.debug("gauge refresh failed: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), GAUGE_INTERVAL_SECONDS)


@contextlib.asynccontextmanager
async def gauges_running(metrics: Metrics, read: GaugeReaders) -> AsyncIterator[None]:
    """Refresh the gauges in the background while inside."""
    stopping = asyncio.Event()
    task = asyncio.create_task(refresh_gauges(metrics, read, stopping), name="gauges")
    try:
        yield
    finally:
        stopping.set()
        await task

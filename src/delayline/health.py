"""Health of the dependencies, and the metrics fed from the running application."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from delayline.domain.outcomes import ExecutionResult
from delayline.errors import is_disk_full
from delayline.metrics import Metrics

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[object]]


class MetricsSink:
    """An outcome sink counting fired events and their lateness."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def record(self, result: ExecutionResult) -> None:
        """Count one outcome."""
        self._metrics.fired(result.outcome.value, result.delay_seconds)


class DependencyHealth:
    """Probes each dependency with a timeout; serving while the near-term store answers.

    ClickHouse down: degraded (near-term scheduling and firing go on). Kafka down: degraded
    (due events wait and fire when it returns). Redis down: not serving. A store whose disk is
    full (it refuses writes): "full", degraded, with the reason.
    """

    def __init__(
        self,
        probes: dict[str, Probe],
        *,
        required: frozenset[str] = frozenset({"redis"}),
        breakers: Callable[[], dict[str, str]] | None = None,
        timeout: float = 2.0,
    ) -> None:
        self._probes = probes
        self._required = required
        self._breakers = breakers or dict
        self._timeout = timeout

    async def _probe(self, name: str, probe: Probe) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                ok = await probe()
        except Exception as exc:
            # A full disk leaves reads working: degraded, with the reason, not down.
            status = "full" if is_disk_full(exc) else "down"
            return {"status": status, "error": f"{type(exc).__name__}: {exc}"[:300]}
        latency_ms = round((time.perf_counter() - started) * 1000, 2)
        return {"status": "up" if ok is not False else "down", "latency_ms": latency_ms}

    async def check(self) -> dict[str, Any]:
        """Each dependency's state, each breaker's, and ``serving``."""
        names = list(self._probes)
        results = await asyncio.gather(*(self._probe(n, self._probes[n]) for n in names))
        deps = dict(zip(names, results, strict=True))
        serving = all(deps[n]["status"] in {"up", "full"} for n in self._required if n in deps)
        healthy = all(d["status"] == "up" for d in deps.values())
        return {
            "status": "ok" if healthy else ("degraded" if serving else "down"),
            "serving": serving,
            "dependencies": deps,
            "breakers": self._breakers(),
        }

"""Scenario 4: Redis memory per pending event, and process RSS with many events pending.

``used_memory`` (``INFO memory``) is read before and after scheduling N events due in an hour
(nothing fires); the delta over N is the figure. ``MEMORY USAGE`` of the store's two keys is
reported beside it. RSS is read from ``/proc`` for the Valkey server and for this process.
"""

from __future__ import annotations

from bench.common import Result, near_store, rss_bytes
from bench.common import redis_client as make_client
from bench.scheduling import build_events
from delayline.clock import SystemClock
from delayline.services.scheduler import SchedulerService

_CHUNK = 5000


async def _used_memory(url: str) -> int:
    client = make_client(url)
    try:
        info = await client.info("memory")
        return int(info["used_memory"])
    finally:
        await client.aclose()


async def run(redis_url: str, valkey_pid: int | None, n: int, n_rss: int) -> Result:
    """Bytes per pending event at ``n`` events; RSS of server and process at ``n_rss``."""
    before = await _used_memory(redis_url)
    rss_server_before = rss_bytes(valkey_pid) if valkey_pid else 0
    async with near_store(redis_url) as store:
        service = SchedulerService(store, SystemClock())
        scheduled = 0
        per_event: float | None = None
        key_bytes = 0
        for target in (n, n_rss):
            while scheduled < target:
                size = min(_CHUNK, target - scheduled)
                await service.schedule_events(
                    build_events(service, size, 3600, "bench-mem", scheduled)
                )
                scheduled += size
            if per_event is None:
                per_event = (await _used_memory(redis_url) - before) / n
                client = make_client(redis_url)
                for key in (store.due_key, store.payload_key):
                    key_bytes += int(await client.memory_usage(key, samples=0) or 0)
                await client.aclose()
        used_at_rss = await _used_memory(redis_url)
        rss_server = rss_bytes(valkey_pid) if valkey_pid else 0
        rss_self = rss_bytes()
        pending = (await store.counts())["pending"]
    return {
        "scenario": "4 memory",
        "events": n,
        "bytes_per_event": per_event,
        "memory_usage_keys_per_event": key_bytes / n,
        "target_bytes_per_event": 450,
        "rss_events": pending,
        "used_memory_at_rss_events": used_at_rss - before,
        "valkey_rss_bytes": rss_server,
        "valkey_rss_delta_bytes": rss_server - rss_server_before,
        "python_rss_bytes": rss_self,
    }

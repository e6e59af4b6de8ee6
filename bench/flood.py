"""Scenario: firing lateness at rest beside firing lateness under an API flood, same run.

The served application (HTTP API with a key, both tiers, no Kafka consumer) fires events put
straight into Valkey ahead of time, ``rate`` per second for ``duration`` seconds, each due at
its own instant; lateness is the delivery report's time minus the due time, from the outcome
sink. Phase ``rest``: nothing else happens. Phase ``flood``: a separate process keeps
``clients`` unauthenticated ~13 MB JSON bodies and ``clients`` authenticated ~2 MB JSON bodies
(over the body limit) in flight against the API.

Three layouts, each measured at rest and under the flood: ``thread`` (the default: the
dispatcher in its own event-loop thread), ``process`` (the dispatcher in its own process,
results sent back over a queue) and ``main_loop`` (the dispatcher on the API's event loop, for
reference).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.common import Result, body_300, percentiles
from bench.common import redis_client as make_client
from delayline.adapters.embedded import free_port
from delayline.adapters.guarded import GuardedPublisher
from delayline.adapters.kafka_producer import KafkaEventPublisher, producer_config
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.api.keys import ApiKeyEntry
from delayline.bootstrap import Application
from delayline.domain.events import ScheduledEvent, utc_now
from delayline.domain.outcomes import ExecutionResult
from delayline.firing_runtime import dispatcher_config
from delayline.resilience import CircuitBreaker
from delayline.services.dispatcher import Dispatcher
from delayline.settings import load_settings

API_KEY = "bench-flood-key"
LEAD_S = 1.0
"""Seconds between scheduling a phase's events and the first one's due time."""


def _flood(base: str, clients: int, stop_at: float, counts: Any) -> None:
    """In a separate process: keep ``clients`` big bad requests of each kind in flight."""
    import httpx

    big_unauthenticated = b'{"topic":"t","body":"' + b"a" * (13 * 1024 * 1024) + b'"}'
    big_authenticated = b'{"topic":"t","body":"' + b"b" * (2 * 1024 * 1024) + b'"}'

    async def loop(body: bytes, headers: dict[str, str], slot: int) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            while time.time() < stop_at:
                try:
                    await http.post("/api/v1/schedules", content=body, headers=headers)
                    counts[slot] += 1
                except httpx.HTTPError:
                    counts[2] += 1

    async def main() -> None:
        json_type = {"content-type": "application/json"}
        await asyncio.gather(
            *(loop(big_unauthenticated, json_type, 0) for _ in range(clients)),
            *(
                loop(big_authenticated, {**json_type, "x-api-key": API_KEY}, 1)
                for _ in range(clients)
            ),
        )

    asyncio.run(main())


class _Lateness:
    """Lateness figures arriving from an outcome sink, in this process or over a queue."""

    def __init__(self) -> None:
        self.lateness_s: list[float] = []

    def record(self, result: ExecutionResult) -> None:
        self.lateness_s.append(result.delay_seconds)

    async def wait_for(self, n: int, timeout: float) -> bool:
        """Poll (figures may come from another thread) until ``n`` arrived or time is up."""
        for _ in range(int(timeout / 0.05)):
            if len(self.lateness_s) >= n:
                break
            await asyncio.sleep(0.05)
        return len(self.lateness_s) >= n


async def _schedule_phase(
    store: RedisNearTermStore, app: Application, topic: str, rate: float, duration: float
) -> tuple[list[ScheduledEvent], float]:
    """Put ``rate × duration`` events into Valkey, due from ``LEAD_S`` s on; returns them and
    the wall time the last one is due."""
    first = utc_now() + timedelta(seconds=LEAD_S)
    body = body_300()
    events = [
        app.service.build_event(
            topic=topic, body=body, scheduled_at=first + timedelta(seconds=i / rate)
        )
        for i in range(int(rate * duration))
    ]
    for start in range(0, len(events), 500):
        await store.schedule(events[start : start + 500])
    return events, time.time() + LEAD_S + duration


async def _phase(
    app: Application,
    store: RedisNearTermStore,
    sink: _Lateness,
    topic: str,
    sizes: dict[str, Any],
    flood: bool,
) -> Result:
    before = len(sink.lateness_s)
    events, last_due = await _schedule_phase(store, app, topic, sizes["rate"], sizes["duration"])
    proc = None
    counts: Any = mp.get_context("spawn").Array("i", 3)
    if flood:
        base = f"http://127.0.0.1:{app.settings.api_port}"
        proc = mp.get_context("spawn").Process(
            target=_flood, args=(base, sizes["clients"], last_due + 0.5, counts), daemon=True
        )
        proc.start()
    done = await sink.wait_for(before + len(events), timeout=last_due - time.time() + 60)
    if proc is not None:
        await asyncio.to_thread(proc.join, 70)
    late = sink.lateness_s[before:]
    result: Result = {
        "events": len(events),
        "fired": len(late),
        "complete": done,
        **{f"{k}_ms": v * 1000 for k, v in percentiles(late, (50, 99, 100)).items()},
    }
    if flood:
        result["flood_requests"] = {
            "unauthenticated_13mb": counts[0],
            "authenticated_2mb": counts[1],
            "failed": counts[2],
        }
    return result


async def _layout(
    servers: tuple[str, str, str], workdir: Path, sizes: dict[str, Any], *, layout: str
) -> Result:
    redis_url, bootstrap, chdb_dsn = servers
    unique = uuid.uuid4().hex[:8]
    settings = load_settings(
        redis_url=redis_url,
        redis_key_prefix=f"flood-{unique}",
        kafka_bootstrap_servers=bootstrap,
        api_keys=[ApiKeyEntry.for_key(API_KEY, id="flood")],
        analytics_enabled=False,
        clickhouse_dsn=chdb_dsn,  # the suite's chDB folder: one process may open it
        clickhouse_database=f"flood_{unique}",
        data_dir=workdir / f"flood-{unique}",
        api_port=free_port(),
        firing_runtime="process" if layout == "process" else "thread",
    )
    roles = {"schedule", "api"} if layout == "main_loop" else {"schedule", "api", "fire"}
    app = Application(settings, roles=roles)
    sink = _Lateness()
    app.sink.add(sink)
    await app.start()
    client = make_client(redis_url)
    store = RedisNearTermStore(client, prefix=settings.redis_key_prefix)
    stop_dispatcher: Callable[[], Awaitable[None]] | None = None
    if layout == "main_loop":  # the dispatcher shares the API's loop and Redis pool
        publisher = KafkaEventPublisher(
            producer_config(
                bootstrap,
                linger_ms=settings.kafka_linger_ms,
                lease_seconds=settings.lease_seconds,
                extra=settings.resolved_kafka_client_options,
            )
        )
        await publisher.start()
        dispatcher = Dispatcher(
            app.wired.near,
            GuardedPublisher(publisher, CircuitBreaker("kafka_producer")),
            app.sink,
            app.clock,
            dispatcher_config(settings),
        )
        task = asyncio.create_task(dispatcher.run())

        async def stop_main_loop() -> None:
            dispatcher.stop()
            await task
            await publisher.stop(settings.shutdown_timeout)

        stop_dispatcher = stop_main_loop
    try:
        topic = f"flood-{unique}"
        rest = await _phase(app, store, sink, topic, sizes, flood=False)
        flooded = await _phase(app, store, sink, topic, sizes, flood=True)
    finally:
        if stop_dispatcher is not None:
            await stop_dispatcher()
        await store.delete_all()
        await client.aclose()
        await app.stop()
    return {"rest": rest, "flood": flooded}


async def run(
    redis_url: str, bootstrap: str, chdb_dsn: str, rate: float, duration: float, clients: int
) -> Result:
    """Each layout at rest and under the flood."""
    servers = (redis_url, bootstrap, chdb_dsn)
    sizes = {"rate": rate, "duration": duration, "clients": clients}
    with tempfile.TemporaryDirectory(prefix="delayline-flood-") as tmp:
        work = Path(tmp)
        layouts = {
            name: await _layout(servers, work, sizes, layout=name)
            for name in ("thread", "process", "main_loop")
        }
    ours = layouts["thread"]
    return {
        "rate": rate,
        "duration_s": duration,
        "clients": clients,
        "layouts": layouts,
        "rest_p99_ms": ours["rest"]["p99_ms"],
        "flood_p99_ms": ours["flood"]["p99_ms"],
    }

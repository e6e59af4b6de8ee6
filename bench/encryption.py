"""Encryption at rest: what sealing bodies and headers costs, off and on in the same run.

* ``schedule``: N events (300-byte body, two headers) stored in Redis by
  ``RedisNearTermStore.schedule`` in chunks of 1000, events per second.
* ``fire``: N due events fired by a :class:`Dispatcher` to Kafka, events per second (claim
  opens each payload).
* ``bytes``: Redis memory of the payload hash per event (``MEMORY USAGE``) and the stored
  value's length.
* ``seal_us``/``open_us``: one seal and one open alone, in microseconds.

Rounds alternate off/on so a machine shared with other work weighs on both alike; each mode's
best round is reported.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from bench.common import CollectingSink, Result, body_300, publisher, redis_client
from delayline.adapters.encryption import KeyRing, PayloadCipher
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.clock import SystemClock
from delayline.domain.events import ScheduledEvent, new_event
from delayline.services.dispatcher import Dispatcher, DispatcherConfig

_CHUNK = 1000
_HEADERS = {"x-tenant": "acme", "x-trace": "4bf92f3577b34da6a3ce929d0e0e4736"}


def _cipher() -> PayloadCipher:
    return PayloadCipher(KeyRing(keys={"k1": os.urandom(32)}, current="k1"))


def _events(n: int, topic: str, due_in: float) -> list[ScheduledEvent]:
    now = SystemClock().now()
    body = body_300().encode()
    return [
        new_event(
            topic=topic,
            body=body,
            headers=_HEADERS,
            entity_type="order",
            scheduled_at=now + timedelta(seconds=due_in),
            correlation_id=f"c{i}",
            now=now,
        )
        for i in range(n)
    ]


@asynccontextmanager
async def _store(url: str, cipher: PayloadCipher | None) -> AsyncIterator[RedisNearTermStore]:
    client = redis_client(url)
    store = RedisNearTermStore(client, prefix=f"bench-enc-{uuid.uuid4().hex[:8]}", cipher=cipher)
    try:
        yield store
    finally:
        await store.delete_all()
        await client.aclose()


async def _schedule(url: str, n: int, cipher: PayloadCipher | None) -> Result:
    events = _events(n, "bench-enc", 3600)
    async with _store(url, cipher) as store:
        started = time.perf_counter()
        for i in range(0, n, _CHUNK):
            await store.schedule(events[i : i + _CHUNK])
        seconds = time.perf_counter() - started
        client = redis_client(url)
        try:
            memory = int(await client.memory_usage(store.payload_key, samples=0) or 0)
            value = await client.hget(store.payload_key, events[0].schedule_id)
        finally:
            await client.aclose()
    return {
        "events_per_s": n / seconds,
        "payload_bytes_per_event": memory / n,
        "stored_value_bytes": len(value or b""),
    }


async def _fire(url: str, bootstrap: str, n: int, cipher: PayloadCipher | None) -> Result:
    topic = f"bench-enc-{uuid.uuid4().hex[:8]}"
    async with _store(url, cipher) as store, publisher(bootstrap) as pub:
        await pub.publish(_events(1, topic, -1))  # topic metadata fetched before timing
        events = _events(n, topic, -1)
        for i in range(0, n, _CHUNK):
            await store.schedule(events[i : i + _CHUNK])
        sink = CollectingSink()
        config = DispatcherConfig(claim_batch_size=1000, max_sleep_seconds=1.0, node_id="bench")
        dispatcher = Dispatcher(store, pub, sink, SystemClock(), config)
        started = time.perf_counter()
        task = asyncio.create_task(dispatcher.run())
        await sink.wait_for(n, 60 + n / 1000)
        seconds = (sink.arrived[-1] if sink.arrived else time.perf_counter()) - started
        dispatcher.stop()
        await task
    return {"events_per_s": len(sink.arrived) / seconds, "fired": len(sink.arrived)}


def _seal_open_us(rounds: int = 20_000) -> dict[str, float]:
    cipher = _cipher()
    body = body_300().encode()
    started = time.perf_counter()
    for _ in range(rounds):
        sealed = cipher.seal("id-1", "order", _HEADERS, body)
    sealed_us = (time.perf_counter() - started) / rounds * 1e6
    started = time.perf_counter()
    for _ in range(rounds):
        cipher.open("id-1", sealed)
    return {"seal_us": sealed_us, "open_us": (time.perf_counter() - started) / rounds * 1e6}


async def run(redis_url: str, bootstrap: str, n: int, rounds: int = 4) -> Result:
    """Scheduling and firing throughput and bytes per event, encryption off vs on."""
    modes: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for i in range(rounds):
        order = ("off", "on") if i % 2 == 0 else ("on", "off")
        for mode in order:
            cipher = _cipher() if mode == "on" else None
            scheduled = await _schedule(redis_url, n, cipher)
            fired = await _fire(redis_url, bootstrap, n, cipher)
            modes[mode].append({"schedule": scheduled, "fire": fired})
    best: dict[str, dict[str, Any]] = {}
    for mode, runs in modes.items():
        best[mode] = {
            "schedule_events_per_s": max(r["schedule"]["events_per_s"] for r in runs),
            "fire_events_per_s": max(r["fire"]["events_per_s"] for r in runs),
            "payload_bytes_per_event": runs[0]["schedule"]["payload_bytes_per_event"],
            "stored_value_bytes": runs[0]["schedule"]["stored_value_bytes"],
        }
    off, on = best["off"], best["on"]
    return {
        "scenario": "encryption at rest, off vs on",
        "events": n,
        "off": off,
        "on": on,
        **_seal_open_us(),
        "schedule_ratio_on_off": on["schedule_events_per_s"] / off["schedule_events_per_s"],
        "fire_ratio_on_off": on["fire_events_per_s"] / off["fire_events_per_s"],
        "extra_bytes_per_event": on["payload_bytes_per_event"] - off["payload_bytes_per_event"],
        "rounds": modes,
    }

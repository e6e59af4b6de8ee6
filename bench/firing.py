"""Scenario 2 (firing throughput) and the machine's ceilings beside it.

* ``fire``: N events already due at one instant; a :class:`Dispatcher` fires them all to Kafka;
  the clock runs from ``Dispatcher.run()`` until the last delivery report reaches the sink.
* ``raw_claim``: the same Lua (``RedisNearTermStore.claim`` then ``ack``) in a bare loop, no
  publishing: what the Redis tier allows at most.
* ``raw_produce``: confluent-kafka ``Producer.produce`` + ``flush`` of N messages shaped like
  fired events (key, headers, 300-byte value) with the product's producer settings.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from typing import Any

from confluent_kafka import Producer

from bench.common import CollectingSink, Result, body_300, near_store, publisher, rate_series
from delayline.adapters.kafka_producer import producer_config
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.clock import SystemClock
from delayline.domain.events import EventStatus, ScheduledEvent, new_event
from delayline.ports import EventPublisher, Finished, NearTermStore
from delayline.services.dispatcher import Dispatcher, DispatcherConfig

_LOAD_CHUNK = 5000


def due_now_events(n: int, topic: str, start: int = 0) -> list[ScheduledEvent]:
    """``n`` events with 300-byte bodies, all due at the same instant (one second ago)."""
    now = SystemClock().now()
    due = now - timedelta(seconds=1)
    body = body_300()
    return [
        new_event(topic=topic, body=body, scheduled_at=due, correlation_id=f"c{i}", now=now)
        for i in range(start, start + n)
    ]


async def load(store: RedisNearTermStore, n: int, topic: str) -> None:
    """Put ``n`` due events into ``store`` (not timed)."""
    for offset in range(0, n, _LOAD_CHUNK):
        await store.schedule(due_now_events(min(_LOAD_CHUNK, n - offset), topic, offset))


async def fire_all(store: NearTermStore, pub: EventPublisher, n: int, batch: int) -> Result:
    """Time a dispatcher claiming ``batch`` at a time until the ``n`` events due in ``store``
    have fired (loaded beforehand, not timed)."""
    sink = CollectingSink()
    config = DispatcherConfig(claim_batch_size=batch, max_sleep_seconds=1.0, node_id="bench")
    dispatcher = Dispatcher(store, pub, sink, SystemClock(), config)
    started = time.perf_counter()
    task = asyncio.create_task(dispatcher.run())
    await sink.wait_for(n, 60 + n / 1000)
    done = len(sink.arrived)
    seconds = (sink.arrived[-1] if sink.arrived else time.perf_counter()) - started
    dispatcher.stop()
    await task
    counts = await store.counts()
    return {
        "batch": batch,
        "events": n,
        "fired": done,
        "outcomes": sink.outcomes,
        "seconds": seconds,
        "events_per_s": done / seconds if seconds > 0 else 0.0,
        "left_pending": counts["pending"],
        "series": rate_series(sink.arrived, started),
    }


async def fire(redis_url: str, bootstrap: str, n: int, batch: int, linger_ms: float) -> Result:
    """Fire ``n`` due events with a dispatcher claiming ``batch`` at a time."""
    topic = f"bench-fire-{uuid.uuid4().hex[:8]}"
    async with near_store(redis_url) as store, publisher(bootstrap, linger_ms) as pub:
        await pub.publish(due_now_events(1, topic))  # topic metadata fetched before timing
        await load(store, n, topic)
        return await fire_all(store, pub, n, batch)


async def raw_claim(redis_url: str, n: int, batch: int) -> Result:
    """Claim + ack ``n`` due events in a bare loop with the store's own Lua scripts."""
    async with near_store(redis_url) as store:
        await load(store, n, "bench-raw")
        clock = SystemClock()
        done = 0
        started = time.perf_counter()
        while done < n:
            claim = await store.claim(int(clock.now().timestamp() * 1e6), batch, 30)
            if not claim.events:
                break
            finished = [Finished(e.schedule_id, EventStatus.COMPLETED) for e in claim.events]
            await store.ack(claim.token, finished)
            done += len(claim.events)
        seconds = time.perf_counter() - started
    return {"batch": batch, "events": done, "seconds": seconds, "events_per_s": done / seconds}


def raw_produce(bootstrap: str, n: int, linger_ms: float) -> Result:
    """librdkafka alone: produce ``n`` fired-event-shaped messages and wait for every report."""
    event = due_now_events(1, "x")[0]
    headers = event.outgoing_headers()
    value = event.body
    topic = f"bench-raw-{uuid.uuid4().hex[:8]}"
    producer: Any = Producer(
        producer_config(bootstrap, linger_ms=linger_ms, lease_seconds=30, extra={})
    )
    producer.produce(topic, value=value)  # topic metadata fetched before timing
    producer.flush(10)
    reports = [0, 0]

    def delivered(err: object, _msg: object) -> None:
        reports[err is not None] += 1

    started = time.perf_counter()
    for i in range(n):
        while True:
            try:
                producer.produce(
                    topic, value=value, key=f"c{i}", headers=headers, on_delivery=delivered
                )
                break
            except BufferError:
                producer.poll(0.005)
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(120)
    seconds = time.perf_counter() - started
    return {
        "events": n,
        "delivered": reports[0],
        "errors": reports[1],
        "seconds": seconds,
        "events_per_s": reports[0] / seconds,
    }


async def run(
    redis_url: str, bootstrap: str, n: int, batches: tuple[int, ...], linger_ms: float = 1.0
) -> Result:
    """Scenario 2 at each claim batch size, plus both ceilings; ratios against the best."""
    fires = [await fire(redis_url, bootstrap, n, b, linger_ms) for b in batches]
    claims = [await raw_claim(redis_url, n, b) for b in batches]
    produce = await asyncio.to_thread(raw_produce, bootstrap, n, linger_ms)
    best = max(fires, key=lambda r: float(r["events_per_s"]))
    best_claim = max(claims, key=lambda r: float(r["events_per_s"]))
    ours = float(best["events_per_s"])
    return {
        "scenario": "2 firing throughput",
        "events_per_s": ours,
        "best_batch": best["batch"],
        "target_events_per_s": 50_000,
        "linger_ms": linger_ms,
        "runs": fires,
        "ceiling_raw_claim": claims,
        "ceiling_raw_produce": produce,
        "ratio_to_raw_claim": ours / float(best_claim["events_per_s"]),
        "ratio_to_raw_produce": ours / float(produce["events_per_s"]),
    }

"""Scenario 3: firing precision under a steady load.

A separate process schedules ``rate`` events per second for ``duration`` seconds, each due
0.5–5 s later (uniformly), through ``SchedulerService.schedule_events`` in 10 ms ticks; this
process runs one :class:`Dispatcher`. Lateness is the delivery report's wall time minus the
event's due time (``ExecutionResult.delay_seconds``), so it includes the claim, the publish and
the broker's acknowledgement. A separate process keeps the load generator from competing with
the dispatcher for this interpreter's GIL.

Beside it, the machine's ceiling for the same measurement: ``raw_produce_lateness`` produces
messages with librdkafka alone at the same rate, each at its intended send time, and takes the
delivery report's time minus that time: what the broker path adds, with no scheduler at all.

Then the same is read back, in runs of their own: the product at the same rate with a consumer
(its own process, ``fetch.wait.max.ms`` 10 as the README recommends) reading the fired events,
and the raw producer with such a reader; lateness = read time − due time, the lateness a
downstream service sees, with its median per 5 s to show a trend as the topic fills. A last
raw run at 100 messages/s reads with librdkafka's default ``fetch.wait.max.ms`` (500) beside 10.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
import threading
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Producer

from bench.common import (
    DUE_HEADER,
    READER_FETCH_WAIT_MS,
    CollectingSink,
    LatenessReader,
    Result,
    body_300,
    lateness_figures,
    near_store,
    percentiles,
    publisher,
)
from bench.common import redis_client as make_client
from delayline.adapters.kafka_producer import producer_config
from delayline.adapters.kafka_topics import KafkaTopics
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.clock import SystemClock
from delayline.services.dispatcher import Dispatcher, DispatcherConfig
from delayline.services.scheduler import SchedulerService

_TICK_S = 0.01
_PARTITIONS = 4
"""Partitions of the bench topics (what the embedded broker gives a topic it auto-creates)."""
LIBRDKAFKA_DEFAULT_FETCH_WAIT_MS = 500


async def _generate(
    redis_url: str, prefix: str, topic: str, rate: float, duration: float, delays: tuple[float, ...]
) -> int:
    client = make_client(redis_url)
    service = SchedulerService(RedisNearTermStore(client, prefix=prefix), SystemClock())
    clock = SystemClock()
    rnd = random.Random(7)
    body = body_300()
    sent = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < duration:
        due_count = int(rate * elapsed) - sent
        if due_count > 0:
            now = clock.now()
            events = [
                service.build_event(
                    topic=topic,
                    body=body,
                    scheduled_at=now + timedelta(seconds=rnd.uniform(*delays)),
                )
                for _ in range(due_count)
            ]
            await service.schedule_events(events)
            sent += due_count
        await asyncio.sleep(_TICK_S)
    await client.aclose()
    return sent


def _generator_main(args: tuple[Any, ...], out: Any) -> None:
    out.put(asyncio.run(_generate(*args)))


async def run_one(
    redis_url: str,
    bootstrap: str,
    *,
    rate: float,
    duration: float,
    delays: tuple[float, float] = (0.5, 5.0),
    linger_ms: float = 1.0,
    hz: int = 100,
    lookahead_s: float | None = None,
    read: bool = False,
) -> Result:
    """One steady-load run; returns lateness percentiles in milliseconds.

    ``lookahead_s``: the dispatcher's ``claim_lookahead_seconds`` (None: the product default).
    ``read``: a consumer reads the fired events too (its lateness under ``"read"``).
    """
    topic = f"bench-prec-{uuid.uuid4().hex[:8]}"
    KafkaTopics(bootstrap, [topic], partitions=_PARTITIONS).ensure()
    reader = None
    if read:
        reader = await asyncio.to_thread(
            LatenessReader,
            bootstrap,
            topic,
            partitions=_PARTITIONS,
            fetch_wait_ms=READER_FETCH_WAIT_MS,
        )
    admin = make_client(redis_url)
    old_hz = (await admin.config_get("hz")).get("hz") or "10"
    await admin.config_set("hz", hz)
    try:
        async with near_store(redis_url) as store, publisher(bootstrap, linger_ms) as pub:
            sink = CollectingSink()
            config = DispatcherConfig(max_sleep_seconds=5.0, node_id="bench")
            if lookahead_s is not None:
                config = replace(config, claim_lookahead_seconds=lookahead_s)
            dispatcher = Dispatcher(store, pub, sink, SystemClock(), config)
            task = asyncio.create_task(dispatcher.run())
            await asyncio.sleep(0.2)  # subscribed to wake-ups before the load begins
            ctx = mp.get_context("spawn")
            out = ctx.Queue()
            prefix = store.due_key.split("}")[0].lstrip("{")
            args = (redis_url, prefix, topic, rate, duration, delays)
            proc = ctx.Process(target=_generator_main, args=(args, out), daemon=True)
            proc.start()
            sent: int = await asyncio.to_thread(out.get, True, duration + 60)
            await asyncio.to_thread(proc.join, 10)
            await sink.wait_for(sent, delays[1] + 30)
            dispatcher.stop()
            await task
            if reader is not None:
                read_rows = await asyncio.to_thread(reader.collect, sent, 30)
    finally:
        await admin.config_set("hz", old_hz)
        await admin.aclose()
    late_ms = [x * 1000 for x in sink.lateness_s]
    extra = {}
    if reader is not None:
        extra["read"] = {"fetch_wait_max_ms": READER_FETCH_WAIT_MS, **lateness_figures(read_rows)}
    stats = percentiles(late_ms, (50, 99, 99.9))
    return {
        "rate": rate,
        "duration_s": duration,
        "linger_ms": linger_ms,
        "hz": hz,
        "lookahead_ms": config.claim_lookahead_seconds * 1000,
        "scheduled": sent,
        "fired": len(late_ms),
        "outcomes": sink.outcomes,
        "p50_ms": stats["p50"],
        "p99_ms": stats["p99"],
        "p99_9_ms": stats["p99.9"],
        "max_ms": max(late_ms) if late_ms else float("nan"),
        "min_ms": min(late_ms) if late_ms else float("nan"),
        "cdf_ms": _cdf(late_ms),
        **extra,
    }


def _cdf(values: list[float]) -> list[list[float]]:
    """A compact CDF: 200 even quantiles plus the tail (99.9 %, 99.99 %, max)."""
    if not values:
        return []
    ordered = sorted(values)
    n = len(ordered)
    fractions = [i / 200 for i in range(1, 200)] + [0.995, 0.999, 0.9999, 1.0]
    return [[ordered[min(n - 1, int(f * n))], f] for f in sorted(set(fractions))]


def raw_produce_lateness(
    bootstrap: str,
    rate: float,
    duration: float,
    linger_ms: float,
    read_fetch_waits_ms: tuple[int, ...] = (),
) -> Result:
    """librdkafka alone at ``rate`` messages/s: delivery report minus the intended send time,
    and, for each of ``read_fetch_waits_ms``, a reader's read time minus that time."""
    producer: Any = Producer(
        producer_config(bootstrap, linger_ms=linger_ms, lease_seconds=30, extra={})
    )
    topic = f"bench-prec-raw-{uuid.uuid4().hex[:8]}"
    KafkaTopics(bootstrap, [topic], partitions=_PARTITIONS).ensure()
    readers = [
        LatenessReader(bootstrap, topic, partitions=_PARTITIONS, fetch_wait_ms=wait)
        for wait in read_fetch_waits_ms
    ]
    producer.produce(topic, value=b"x")  # no due time: the readers skip it
    producer.flush(10)  # topic metadata fetched before timing
    value = body_300().encode()
    late_ms: list[float] = []
    polling = threading.Event()
    polling.set()

    def poll_forever() -> None:  # the product's shape: one poll thread for delivery reports
        while polling.is_set():
            producer.poll(0.05)

    poller = threading.Thread(target=poll_forever, daemon=True)
    poller.start()
    started = time.perf_counter()
    started_wall = time.time() - (time.perf_counter() - started)
    total = int(rate * duration)
    for sent in range(total):
        at = started + sent / rate
        time.sleep(max(0.0, at - time.perf_counter()))
        due = datetime.fromtimestamp(started_wall + sent / rate, UTC).isoformat()

        def delivered(err: object, _msg: object, at: float = at) -> None:
            if err is None:
                late_ms.append((time.perf_counter() - at) * 1000)

        producer.produce(topic, value=value, headers={DUE_HEADER: due}, on_delivery=delivered)
    producer.flush(30)
    polling.clear()
    poller.join()
    stats = percentiles(late_ms, (50, 99, 99.9))
    return {
        "rate": rate,
        "duration_s": duration,
        "linger_ms": linger_ms,
        "sent": total,
        "delivered": len(late_ms),
        "p50_ms": stats["p50"],
        "p99_ms": stats["p99"],
        "p99_9_ms": stats["p99.9"],
        "max_ms": max(late_ms) if late_ms else float("nan"),
        "read": [
            {"fetch_wait_max_ms": r.fetch_wait_ms, **lateness_figures(r.collect(total, 30))}
            for r in readers
        ],
    }


async def run(
    redis_url: str, bootstrap: str, *, rate: float, duration: float, variants: bool
) -> Result:
    """The headline run (product defaults), the raw-produce ceiling, optionally the variants
    (linger 0 ms, the old 2 ms claim lookahead), then the read runs: the product and the
    ceiling again with a consumer reading the topic, and a consumer's ``fetch.wait.max.ms``.

    The headline, variants and ceiling run unread: a reader's fetches load the embedded broker
    and slow its acknowledgements as the topic fills, which the read runs show.
    """
    delays = (0.5, 5.0) if duration >= 20 else (0.5, 1.0)
    main = await run_one(redis_url, bootstrap, rate=rate, duration=duration, delays=delays)
    runs = [main]
    short = max(10.0, duration / 2) if duration >= 20 else duration
    if variants:
        for linger, lookahead in ((0.0, None), (1.0, 0.002)):
            runs.append(
                await run_one(
                    redis_url,
                    bootstrap,
                    rate=rate,
                    duration=short,
                    delays=delays,
                    linger_ms=linger,
                    lookahead_s=lookahead,
                )
            )
    linger = main["linger_ms"]
    ceiling = await asyncio.to_thread(
        raw_produce_lateness, bootstrap, rate, min(duration, 30.0), linger
    )
    read = await run_one(redis_url, bootstrap, rate=rate, duration=short, delays=delays, read=True)
    read_ceiling = await asyncio.to_thread(
        raw_produce_lateness, bootstrap, rate, short, linger, (READER_FETCH_WAIT_MS,)
    )
    # What a downstream consumer's fetch.wait.max.ms costs at a modest rate.
    fetch_waits = (LIBRDKAFKA_DEFAULT_FETCH_WAIT_MS, READER_FETCH_WAIT_MS)
    consumer_settings = await asyncio.to_thread(
        raw_produce_lateness, bootstrap, min(rate, 100.0), min(duration, 20.0), linger, fetch_waits
    )
    return {
        "scenario": "3 firing precision",
        "p50_ms": main["p50_ms"],
        "p99_ms": main["p99_ms"],
        "p99_9_ms": main["p99_9_ms"],
        "max_ms": main["max_ms"],
        "target_p99_ms": 5.0,
        "runs": runs,
        "ceiling_raw_produce": ceiling,
        "p99_over_raw_produce_p99": main["p99_ms"] / ceiling["p99_ms"],
        "read_run": read,
        "read_ceiling": read_ceiling,
        "consumer_fetch_wait": consumer_settings,
    }

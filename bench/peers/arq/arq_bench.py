"""arq peer of the benchmark suite; runs in its own venv (arq pins redis<6), driven by
``bench/peers/arq_peer.py``. Modes (one JSON document printed on stdout each)::

    python arq_bench.py schedule <redis-url> <n> <chunk>         # scenario 1
    python arq_bench.py fire     <redis-url> <n> <max-jobs> <poll-delay-s>  # scenario 2
    python arq_bench.py steady   <redis-url> <queue> <rate> <seconds> <min-delay-s> <max-delay-s>
    python arq_bench.py worker   <redis-url> <queue> <max-jobs> <poll-delay-s>  # count on stdin

arq has no bulk enqueue: ``enqueue_job`` is awaited concurrently, ``chunk`` at a time. Jobs
are deferred with ``_defer_until``; the job function records its own lateness (its start time
minus the due time it was given).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

from arq import create_pool  # type: ignore[import-not-found,unused-ignore]
from arq.connections import RedisSettings  # type: ignore[import-not-found,unused-ignore]
from arq.worker import Worker  # type: ignore[import-not-found,unused-ignore]

BODY = os.environ.get("BENCH_BODY", "{}")


def settings(url: str) -> Any:
    parsed = urlparse(url)
    return RedisSettings(host=parsed.hostname or "127.0.0.1", port=parsed.port or 6379)


async def _enqueue(pool: Any, queue: str, dues: list[float], chunk: int) -> None:
    for offset in range(0, len(dues), chunk):
        await asyncio.gather(
            *(
                pool.enqueue_job(
                    "job",
                    BODY,
                    due,
                    _defer_until=datetime.fromtimestamp(due, UTC),
                    _queue_name=queue,
                )
                for due in dues[offset : offset + chunk]
            )
        )


async def schedule(url: str, n: int, chunk: int) -> dict[str, Any]:
    pool = await create_pool(settings(url))
    queue = f"sched-{os.getpid()}"
    due = time.time() + 3600
    started = time.perf_counter()
    await _enqueue(pool, queue, [due] * n, chunk)
    seconds = time.perf_counter() - started
    delayed = await pool.zcard(queue)
    await pool.aclose()
    return {"events": n, "chunk": chunk, "seconds": seconds, "events_per_s": n / seconds,
            "delayed": delayed}  # fmt: skip


class Recorder:
    """The job function: records lateness and sets ``done`` when ``target`` jobs ran."""

    def __init__(self) -> None:
        self.lateness_ms: list[float] = []
        self.arrived: list[float] = []
        self.target = 2**62
        self.done = asyncio.Event()

    async def job(self, ctx: dict[str, Any], body: str, due: float) -> None:
        self.lateness_ms.append((time.time() - due) * 1000)
        self.arrived.append(time.perf_counter())
        if len(self.lateness_ms) >= self.target:
            self.done.set()


def _worker(url: str, queue: str, rec: Recorder, max_jobs: int, poll_delay: float) -> Any:
    from arq.worker import func  # type: ignore[import-not-found,unused-ignore]

    return Worker(
        functions=[func(rec.job, name="job")],
        redis_settings=settings(url),
        queue_name=queue,
        max_jobs=max_jobs,
        poll_delay=poll_delay,
        keep_result=0,
        handle_signals=False,
    )


async def _stop(worker: Any, task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await worker.close()


async def fire(url: str, n: int, max_jobs: int, poll_delay: float) -> dict[str, Any]:
    pool = await create_pool(settings(url))
    queue = f"fire-{os.getpid()}"
    due = time.time() + 1.0
    await _enqueue(pool, queue, [due] * n, 500)
    await asyncio.sleep(max(0.0, due + 0.01 - time.time()))  # every job is due now
    rec = Recorder()
    rec.target = n
    worker = _worker(url, queue, rec, max_jobs, poll_delay)
    started = time.perf_counter()
    task = asyncio.create_task(worker.async_run())
    await asyncio.wait_for(rec.done.wait(), 60 + n / 100)
    seconds = rec.arrived[-1] - started
    await _stop(worker, task)
    await pool.aclose()
    fired = len(rec.arrived)
    return {"events": n, "fired": fired, "max_jobs": max_jobs, "poll_delay_s": poll_delay,
            "seconds": seconds,
            "events_per_s": fired / seconds}  # fmt: skip


async def steady(
    url: str, queue: str, rate: float, duration: float, dmin: float, dmax: float
) -> dict[str, Any]:
    pool = await create_pool(settings(url))
    rnd = random.Random(7)
    sent = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < duration:
        count = int(rate * elapsed) - sent
        if count > 0:
            now = time.time()
            await _enqueue(pool, queue, [now + rnd.uniform(dmin, dmax) for _ in range(count)], 500)
            sent += count
        await asyncio.sleep(0.01)
    await pool.aclose()
    return {"sent": sent}


async def worker(url: str, queue: str, max_jobs: int, poll_delay: float) -> dict[str, Any]:
    rec = Recorder()
    w = _worker(url, queue, rec, max_jobs, poll_delay)
    task = asyncio.create_task(w.async_run())
    print("ready", file=sys.stderr, flush=True)
    line = await asyncio.to_thread(sys.stdin.readline)
    rec.target = int(line)
    if len(rec.lateness_ms) >= rec.target:
        rec.done.set()
    with contextlib.suppress(TimeoutError):  # a worker that cannot keep up: report what ran
        await asyncio.wait_for(rec.done.wait(), 60)
    await _stop(w, task)
    return {"fired": len(rec.lateness_ms), "lateness_ms": rec.lateness_ms}


def main() -> None:
    mode, url, *rest = sys.argv[1:]
    runs = {
        "schedule": lambda: schedule(url, int(rest[0]), int(rest[1])),
        "fire": lambda: fire(url, int(rest[0]), int(rest[1]), float(rest[2])),
        "steady": lambda: steady(url, rest[0], *(float(x) for x in rest[1:5])),
        "worker": lambda: worker(url, rest[0], int(rest[1]), float(rest[2])),
    }
    print(json.dumps(asyncio.run(runs[mode]())), flush=True)


if __name__ == "__main__":
    main()

"""Headline: the product as shipped, measured at a downstream consumer.

``delayline serve`` runs as users run it: a subprocess with its defaults (its own data folder,
embedded Valkey, Tansu and chDB, analytics and lifecycle recording on, the HTTP API and the
Kafka consumer running). Everything goes in through the HTTP bulk endpoint and is timed where
a downstream service sees it: a Kafka consumer in a process of its own, reading each fired
event at once (``fetch.wait.max.ms`` 10), lateness = read time − the ``x-scheduled-at`` header.

* ``burst``: ``n`` events all due at one instant, loaded ahead of it; fired/s = ``n`` over the
  time from that instant to the last read, and the lateness percentiles of the reads. Then,
  for a sample of them, whether their lifecycle history was recorded to the end.
* ``steady``: ``rate`` events per second for ``duration`` seconds, each due 0.5–5 s after it
  was posted; lateness percentiles.
* ``bare``: beside them, in the same run, the dispatcher alone on the suite's own servers
  (:func:`bench.firing.fire`, the product's claim batch): no API, no consumer, no recording,
  timed at the delivery report.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench import firing
from bench.common import (
    READER_FETCH_WAIT_MS,
    LatenessReader,
    Result,
    body_300,
    lateness_figures,
    percentiles,
)
from delayline.adapters.embedded import free_port
from delayline.adapters.kafka_topics import KafkaTopics
from delayline.bootstrap import read_runtime_file
from delayline.settings import Settings

SCHEDULES = "/api/v1/schedules"
HEALTH = "/api/v1/schedules/monitoring/health"
POST_CHUNK = 5000
"""Events per bulk request while loading the burst (the API takes up to 10,000)."""
LOADERS = 2
"""Bulk requests in flight at once while loading the burst."""
PARTITIONS = 4
TICK_S = 0.01
HISTORY_SAMPLE = 200
HISTORY_SETTLE_S = 5.0
"""After the burst: time for the last recorded steps to be written before they are checked."""
START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Served:
    """A running ``delayline serve``: its API and the embedded broker it fires to."""

    api: str
    bootstrap: str
    pid: int


@contextlib.asynccontextmanager
async def served(workdir: Path, env: dict[str, str] | None = None) -> AsyncIterator[Served]:
    """``delayline serve`` in a subprocess with its defaults, in ``workdir``; stopped by its PID
    with SIGTERM (it drains) when done. ``env``: extra settings, for variants only."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULES_")}
    clean |= {"SCHEDULES_DATA_DIR": str(workdir / "data"), "SCHEDULES_API_PORT": str(port)}
    log = (workdir / "serve.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "delayline", "serve", "--log-level", "WARNING"),
        env=clean | (env or {}),
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{port}"
    try:
        bootstrap = await _wait_until_serving(proc, api, workdir / "data")
        yield Served(api, bootstrap, proc.pid)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


async def _wait_until_serving(proc: asyncio.subprocess.Process, api: str, data: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise RuntimeError(f"delayline serve exited with code {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(api + HEALTH)).status_code == 200:
                    bootstrap = read_runtime_file(data).get("bootstrap_servers")
                    if bootstrap:
                        return str(bootstrap)
            await asyncio.sleep(0.2)
    raise RuntimeError("delayline serve did not become healthy in time")


def _reader(bootstrap: str, topic: str) -> LatenessReader:
    KafkaTopics(bootstrap, [topic], partitions=PARTITIONS).ensure()
    return LatenessReader(
        bootstrap, topic, partitions=PARTITIONS, fetch_wait_ms=READER_FETCH_WAIT_MS
    )


def _events(topic: str, due: Sequence[datetime], body: str) -> dict[str, Any]:
    return {
        "events": [
            {"topic": topic, "body": body, "scheduled_at": at.isoformat(), "entity_type": "bench"}
            for at in due
        ]
    }


async def _post(client: httpx.AsyncClient, batch: dict[str, Any]) -> list[str]:
    """Schedule ``batch``; the ids of its events."""
    response = await client.post(SCHEDULES, json=batch)
    if response.status_code != 201:
        raise RuntimeError(f"bulk schedule answered {response.status_code}: {response.text[:200]}")
    return [str(r["schedule_id"]) for r in response.json()["results"]]


async def histories_complete(srv: Served, ids: Sequence[str], sample: int) -> Result:
    """Of ``sample`` of ``ids``, how many have a ``completed`` step in their history: lifecycle
    recording keeps up with the firing (it writes off the firing path, with a bounded buffer)."""
    chosen = random.Random(5).sample(list(ids), min(sample, len(ids)))
    complete = 0
    async with httpx.AsyncClient(base_url=srv.api, timeout=60) as client:
        for schedule_id in chosen:
            response = await client.get(f"{SCHEDULES}/{schedule_id}/history")
            if response.status_code == 200:
                steps = {t["transition"] for t in response.json()["transitions"]}
                complete += "completed" in steps
    return {"histories_checked": len(chosen), "histories_completed": complete}


async def burst(srv: Served, n: int) -> Result:
    """``n`` events due at one instant, loaded through the API ahead of it."""
    topic = f"bench-serve-burst-{uuid.uuid4().hex[:8]}"
    reader = await asyncio.to_thread(_reader, srv.bootstrap, topic)
    body = body_300()
    # Due once loading is surely over (HTTP bulk runs at several thousand events/s here).
    due = datetime.now(UTC) + timedelta(seconds=5 + n / 2000)
    chunks = [min(POST_CHUNK, n - i) for i in range(0, n, POST_CHUNK)]
    load_started = time.perf_counter()
    async with httpx.AsyncClient(base_url=srv.api, timeout=120) as client:
        pending = iter(chunks)
        ids: list[str] = []

        async def loader() -> None:
            for size in pending:
                ids.extend(await _post(client, _events(topic, [due] * size, body)))

        await asyncio.gather(*(loader() for _ in range(LOADERS)))
    load_s = time.perf_counter() - load_started
    loaded_before_due = datetime.now(UTC) < due
    rows = await asyncio.to_thread(
        reader.collect, n, (due - datetime.now(UTC)).total_seconds() + 60 + n / 1000
    )
    due_s = due.timestamp()
    late_ms = [ms for _, ms in rows]
    last_s = max(late_ms, default=float("nan")) / 1000
    first_s = min(late_ms, default=float("nan")) / 1000
    stats = percentiles(late_ms, (50, 99))
    await asyncio.sleep(HISTORY_SETTLE_S)
    return {
        **await histories_complete(srv, ids, HISTORY_SAMPLE),
        "events": n,
        "read": len(rows),
        "load_s": load_s,
        "load_events_per_s": n / load_s,
        "loaded_before_due": loaded_before_due,
        "due_epoch_s": due_s,
        "first_read_after_due_s": first_s,
        "last_read_after_due_s": last_s,
        "fired_per_s": len(rows) / last_s if last_s > 0 else float("nan"),
        "p50_ms": stats["p50"],
        "p99_ms": stats["p99"],
    }


async def steady(srv: Served, rate: float, duration: float) -> Result:
    """``rate`` events/s posted in 10 ms ticks for ``duration`` s, each due 0.5–5 s later."""
    topic = f"bench-serve-steady-{uuid.uuid4().hex[:8]}"
    reader = await asyncio.to_thread(_reader, srv.bootstrap, topic)
    body = body_300()
    rnd = random.Random(11)
    sent = 0
    async with httpx.AsyncClient(base_url=srv.api, timeout=60) as client:
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < duration:
            count = int(rate * elapsed) - sent
            if count > 0:
                now = datetime.now(UTC)
                due = [now + timedelta(seconds=rnd.uniform(0.5, 5.0)) for _ in range(count)]
                await _post(client, _events(topic, due, body))
                sent += count
            await asyncio.sleep(TICK_S)
    rows = await asyncio.to_thread(reader.collect, sent, 30)
    return {"rate": rate, "duration_s": duration, "scheduled": sent, **lateness_figures(rows)}


def _load() -> float:
    return os.getloadavg()[0]


async def run(redis_url: str, bootstrap: str, *, n: int, rate: float, duration: float) -> Result:
    """The bare dispatcher, then ``delayline serve``'s burst and steady stream, same run."""
    batch = int(Settings.model_fields["claim_batch_size"].default)  # the shipped default
    load_bare = _load()
    bare = await firing.fire(redis_url, bootstrap, n, batch, linger_ms=1.0)
    bare.pop("series", None)
    bare["loadavg_1m"] = load_bare
    with tempfile.TemporaryDirectory(prefix="delayline-bench-serve-") as tmp:
        async with served(Path(tmp)) as srv:
            load_burst = _load()
            fired = await burst(srv, n)
            fired["loadavg_1m"] = load_burst
            load_steady = _load()
            stream = await steady(srv, rate, duration)
            stream["loadavg_1m"] = load_steady
    return {
        "scenario": "serve: the product as shipped",
        "claim_batch_size": batch,
        "events_per_s": fired["fired_per_s"],
        "p99_ms": stream["p99_ms"],
        "bare_events_per_s": bare["events_per_s"],
        "serve_over_bare": fired["fired_per_s"] / float(bare["events_per_s"]),
        "bare": bare,
        "burst": fired,
        "steady": stream,
    }

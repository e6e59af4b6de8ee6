"""Run the benchmark suite: ``python -m bench [--quick] [--only NAME ...] [--repeat K]
[--out-dir DIR]``.

Starts its own embedded Valkey and Tansu, runs the scenarios in order, prints a table and writes
``latest.json`` (``quick.json`` with ``--quick``) and PNG plots to the output folder;
``--merge`` adds this run's scenarios to the results already there (each keeps its own
``when``/``git_commit`` under ``run``), for a scenario re-run on its own. The peers
(``arq``, ``bullmq``) each get their own Valkey and are installed on first use (a venv, ``npm
ci``); ``--quick`` skips them. ``--repeat K`` runs the key scenarios K times and records the
median of each headline figure under ``median``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    encryption,
    firing,
    flood,
    kafka_ingest,
    lifecycle,
    memory,
    plots,
    precision,
    scheduling,
    serve,
    sharding,
    workers,
)
from bench.common import Servers, median, servers
from bench.peers import driver as peers
from bench.report import peer_ratios, print_table

RESULTS_DIR = Path(__file__).parent / "results"

_PEER_FULL = {"n": 200_000, "chunk": 5000, "rate": 2000, "duration": 60.0, "delays": (0.5, 5.0)}
_PEER_QUICK = {"skip": "peers run in the full suite only (they need a venv and npm)"}
FULL: dict[str, Any] = {
    "scheduling": {"n": 200_000, "chunks": (1000, 5000)},
    "kafka": {"n": 200_000},
    "firing": {"n": 200_000, "batches": (100, 1000)},
    "precision": {"rate": 2000, "duration": 60.0, "variants": True},
    "memory": {"n": 200_000, "n_rss": 1_000_000},
    "longterm": {"n_insert": 1_000_000, "n_total": 10_000_000, "n_due": 100_000},
    "lifecycle": {"n_total": 10_000_000, "n_key": 100, "repeat": 5},
    "flood": {"rate": 200, "duration": 20.0, "clients": 8},
    "encryption": {"n": 50_000},
    "sharding": {"n": 100_000, "shard_counts": (1, 4, 16)},
    "workers": {"n": 100_000, "shard_counts": (1, 4, 16)},
    "serve": {"n": 50_000, "rate": 2000, "duration": 60.0},
    "arq": _PEER_FULL,
    "bullmq": _PEER_FULL,
}
QUICK: dict[str, Any] = {
    "scheduling": {"n": 5_000, "chunks": (1000,)},
    "kafka": {"n": 2_000},
    "firing": {"n": 5_000, "batches": (100, 1000)},
    "precision": {"rate": 300, "duration": 3.0, "variants": False},
    "memory": {"n": 5_000, "n_rss": 10_000},
    "longterm": {"n_insert": 5_000, "n_total": 20_000, "n_due": 1_000},
    "lifecycle": {"n_total": 20_000, "n_key": 10, "repeat": 3},
    "flood": {"rate": 100, "duration": 3.0, "clients": 2},
    "encryption": {"n": 2_000},
    "sharding": {"n": 2_000, "shard_counts": (1, 4)},
    "workers": {"n": 2_000, "shard_counts": (1, 4)},
    "serve": {"n": 5_000, "rate": 300, "duration": 5.0},
    "arq": _PEER_QUICK,
    "bullmq": _PEER_QUICK,
}
SCENARIOS = tuple(FULL)
REPEATABLE = ("scheduling", "kafka", "firing", "precision")
"""Scenarios ``--repeat`` runs more than once (the others are long and mostly stable)."""


def _machine() -> dict[str, Any]:
    def sh(cmd: str) -> str:
        try:
            return subprocess.run(
                cmd, shell=True, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "nproc": os.cpu_count(),
        "cpu": sh("lscpu | grep 'Model name' | sed 's/.*: *//'"),
        "memory": sh("free -h | awk '/Mem:/ {print $2}'"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": sh("git rev-parse --short HEAD"),
    }


def _scenario_runners(
    srv: Servers, sizes: dict[str, Any]
) -> dict[str, Callable[[], Awaitable[Any]]]:
    url, boot = srv.redis_url, srv.bootstrap
    s, f, p, m = sizes["scheduling"], sizes["firing"], sizes["precision"], sizes["memory"]

    chdb_dir = srv.workdir / "chdb"
    chdb_dir.mkdir(parents=True, exist_ok=True)
    chdb_dsn = f"chdb://{chdb_dir.resolve().as_posix()}"

    async def longterm() -> Any:
        try:  # optional: needs the ClickHouse tier, which may not be there yet
            from bench import longterm as lt
        except ImportError as exc:
            return {"skipped": f"ClickHouse tier unavailable: {exc}"}
        return await lt.run(url, chdb_dsn, **sizes["longterm"])

    return {
        "scheduling": lambda: scheduling.run(url, s["n"], s["chunks"]),
        "kafka": lambda: kafka_ingest.run(url, boot, sizes["kafka"]["n"]),
        "firing": lambda: firing.run(url, boot, f["n"], f["batches"]),
        "precision": lambda: precision.run(url, boot, **p),
        "memory": lambda: memory.run(url, srv.valkey.pid, m["n"], m["n_rss"]),
        "longterm": longterm,
        "lifecycle": lambda: lifecycle.run(url, chdb_dsn, **sizes["lifecycle"]),
        "flood": lambda: flood.run(url, boot, chdb_dsn, **sizes["flood"]),
        "encryption": lambda: encryption.run(url, boot, sizes["encryption"]["n"]),
        "sharding": lambda: sharding.run(url, boot, **sizes["sharding"]),
        "workers": lambda: workers.run(url, boot, **sizes["workers"]),
        "serve": lambda: serve.run(url, boot, **sizes["serve"]),
        "arq": lambda: peers.run("arq", srv.workdir, sizes["arq"]),
        "bullmq": lambda: peers.run("bullmq", srv.workdir, sizes["bullmq"]),
    }


async def _once(name: str, runner: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    try:
        result: dict[str, Any] = await runner()
    except Exception as exc:  # one broken scenario must not hide the others
        logging.exception("scenario %s failed", name)
        result = {"error": f"{type(exc).__name__}: {exc}"}
    result["wall_s"] = time.perf_counter() - t0
    # the machine is shared: the load average says how much of it the run really had
    result["loadavg_1m"] = [load_before, os.getloadavg()[0]]
    return result


def _headline(result: dict[str, Any]) -> dict[str, float]:
    """The top-level numbers of one scenario run (what ``--repeat`` takes medians of)."""
    return {
        k: float(v)
        for k, v in result.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "wall_s"
    }


async def _run(only: list[str], sizes: dict[str, Any], repeat: int = 1) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with servers() as srv:
        runners = _scenario_runners(srv, sizes)
        for name in only:
            times = repeat if name in REPEATABLE else 1
            first: dict[str, Any] = {}
            repeats: list[dict[str, float]] = []
            for i in range(times):
                print(f"→ {name} ({i + 1}/{times}) …", file=sys.stderr, flush=True)
                if name == "precision" and i > 0:  # variants once; repeats of the headline
                    p = {**sizes["precision"], "variants": False}
                    result = await _once(
                        name, functools.partial(precision.run, srv.redis_url, srv.bootstrap, **p)
                    )
                else:
                    result = await _once(name, runners[name])
                first = first or result
                repeats.append(_headline(result))
            if times > 1 and "error" not in first:
                first["repeats"] = repeats
                first["median"] = {k: median([r[k] for r in repeats if k in r]) for k in repeats[0]}
            results[name] = first
    return results


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (1 when a scenario failed)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--only", action="append", choices=SCENARIOS, help="repeatable")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--repeat", type=int, default=1, help=f"run {', '.join(REPEATABLE)} this many times"
    )
    parser.add_argument(
        "--merge", action="store_true", help="add to the results already in the output folder"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    only = args.only or list(SCENARIOS)
    sizes = QUICK if args.quick else FULL
    started = time.perf_counter()
    results = asyncio.run(_run(only, sizes, args.repeat))
    out: Path = args.out_dir
    stem = "quick" if args.quick else "latest"
    when = datetime.now(UTC).isoformat(timespec="seconds")
    machine = _machine()
    for result in results.values():
        result["run"] = {"when": when, "git_commit": machine["git_commit"]}
    if args.merge and (out / f"{stem}.json").exists():
        earlier = json.loads((out / f"{stem}.json").read_text())["results"]
        results = {**earlier, **results}
    doc = {
        "when": when,
        "quick": args.quick,
        "machine": machine,
        "total_wall_s": time.perf_counter() - started,
        "repeat": args.repeat,
        "results": results,
        "peer_ratios": peer_ratios(results),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    if "precision" in results and "runs" in results["precision"]:
        peers_done = {k: results[k] for k in ("arq", "bullmq") if "precision" in results.get(k, {})}
        plots.lateness_cdf(results["precision"], out / f"{stem}-lateness-cdf.png", peers_done)
    if any("runs" in results.get(k, {}) for k in ("firing", "scheduling")):
        plots.throughput(results, out / f"{stem}-throughput.png")
    print_table(doc)
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

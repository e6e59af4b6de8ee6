"""PNG plots of a suite's results: the lateness CDF and throughput over time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI or servers

import matplotlib.pyplot as plt


def lateness_cdf(
    precision: dict[str, Any], path: Path, peers: dict[str, dict[str, Any]] | None = None
) -> None:
    """One CDF line per precision run, and one per peer (log x axis: the tail matters)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in precision["runs"]:
        cdf = run["cdf_ms"]
        if not cdf:
            continue
        label = (
            f"{run['rate']:g}/s, linger {run['linger_ms']:g} ms, "
            f"lookahead {run.get('lookahead_ms', 2):g} ms"
        )
        ax.plot([max(x, 0.01) for x, _ in cdf], [f for _, f in cdf], label=label)
    for name, peer in (peers or {}).items():
        cdf = peer.get("precision", {}).get("cdf_ms")
        if cdf:
            xs = [max(x, 0.01) for x, _ in cdf]
            ax.plot(xs, [f for _, f in cdf], linestyle="--", label=f"peer {name} (job start)")
    ax.set_xscale("log")
    ax.set_xlabel("lateness: delivery report − due time (ms)")
    ax.set_ylabel("fraction of events")
    ax.axvline(5.0, color="grey", linestyle=":", label="target p99 5 ms")
    ax.axhline(0.99, color="lightgrey", linestyle="--")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Firing lateness CDF")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def throughput(results: dict[str, Any], path: Path) -> None:
    """Firing rate over time per claim batch size, and scheduling progress as a rate."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7))
    firing = results.get("firing")
    if firing:
        for run in firing["runs"]:
            series = run["series"]
            top.plot(
                [t for t, _ in series], [r / 1000 for _, r in series], label=f"batch {run['batch']}"
            )
    top.set_xlabel("seconds since the dispatcher started")
    top.set_ylabel("delivery reports (k/s)")
    top.set_title("Firing throughput over time (scenario 2)")
    top.grid(True, alpha=0.3)
    top.legend(fontsize=8)
    scheduling = results.get("scheduling")
    if scheduling:
        for run in scheduling["runs"]:
            progress = run["progress"]
            rates = []
            last_t, last_n = 0.0, 0.0
            for t, n in progress:
                if t > last_t:
                    rates.append([t, (n - last_n) / (t - last_t) / 1000])
                last_t, last_n = t, n
            bottom.plot([t for t, _ in rates], [r for _, r in rates], label=f"chunk {run['chunk']}")
    bottom.set_xlabel("seconds since scheduling started")
    bottom.set_ylabel("events stored (k/s)")
    bottom.set_title("Bulk scheduling throughput over time (scenario 1a)")
    bottom.grid(True, alpha=0.3)
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

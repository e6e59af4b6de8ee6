"""The summary table printed at the end of a run (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _rate(x: Any) -> str:
    return f"{float(x) / 1000:,.1f}k/s" if x is not None else "—"


def _ms(x: Any) -> str:
    return f"{float(x):.2f} ms" if x is not None else "—"


def rows(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(scenario, measured, target, note) for every figure in a results document."""
    out: list[tuple[str, str, str, str]] = []
    res = doc["results"]
    for name, r in res.items():
        if "error" in r:
            out.append((name, "FAILED", "", r["error"][:80]))
        elif "skipped" in r:
            out.append((name, "not measured", "", r["skipped"][:80]))
    if "events_per_s" in res.get("scheduling", {}):
        s = res["scheduling"]
        out.append(
            (
                "1a bulk schedule → Redis",
                _rate(s["events_per_s"]),
                "≥ 100k/s",
                f"chunk {s['best_chunk']}",
            )
        )
    if "events_per_s" in res.get("firing", {}):
        f = res["firing"]
        for run in f["runs"]:
            out.append(
                (
                    f"2 firing, batch {run['batch']}",
                    _rate(run["events_per_s"]),
                    "≥ 50k/s",
                    f"{run['fired']}/{run['events']} fired",
                )
            )
        best_claim = max(float(c["events_per_s"]) for c in f["ceiling_raw_claim"])
        out.append(
            (
                "  ceiling: raw claim+ack Lua",
                _rate(best_claim),
                "",
                f"ours = {f['ratio_to_raw_claim']:.2f}×",
            )
        )
        out.append(
            (
                "  ceiling: raw librdkafka produce",
                _rate(f["ceiling_raw_produce"]["events_per_s"]),
                "",
                f"ours = {f['ratio_to_raw_produce']:.2f}×",
            )
        )
    if "runs" in res.get("precision", {}):
        for run in res["precision"]["runs"]:
            out.append(
                (
                    f"3 lateness {run['rate']:g}/s linger {run['linger_ms']:g} hz {run['hz']}",
                    f"p50 {_ms(run['p50_ms'])} p99 {_ms(run['p99_ms'])}",
                    "p99 ≤ 5 ms",
                    f"p99.9 {_ms(run['p99_9_ms'])} max {_ms(run['max_ms'])}",
                )
            )
    if "bytes_per_event" in res.get("memory", {}):
        m = res["memory"]
        out.append(
            (
                "4 Redis bytes/pending event",
                f"{m['bytes_per_event']:.0f} B",
                "≤ 450 B",
                f"MEMORY USAGE {m['memory_usage_keys_per_event']:.0f} B",
            )
        )
        out.append(
            (
                f"4 RSS at {m['rss_events']:,} pending",
                f"valkey {m['valkey_rss_bytes'] / 2**20:.0f} MiB",
                "",
                f"python {m['python_rss_bytes'] / 2**20:.0f} MiB",
            )
        )
    lt = res.get("longterm", {})
    if "insert_events_per_s" in lt:
        out.append(
            (
                "1c long-term insert → ClickHouse",
                _rate(lt["insert_events_per_s"]),
                "",
                f"{lt['n_insert']:,} events",
            )
        )
    if "sync_seconds" in lt:
        out.append(
            (
                f"5 sync {lt['n_due']:,} of {lt['n_total']:,}",
                f"{lt['sync_seconds']:.2f} s",
                "≤ 2 s (100k)",
                f"moved {lt['moved']:,}",
            )
        )
    return out


def print_table(doc: dict[str, Any]) -> None:
    """Print the summary of ``doc`` (a results document) to stdout."""
    table = Table(title=f"Delayline benchmarks{' (quick)' if doc['quick'] else ''}")
    for col in ("scenario", "measured", "target", "note"):
        table.add_column(col)
    for row in rows(doc):
        table.add_row(*row)
    console = Console(width=140)
    console.print(table)
    m = doc["machine"]
    console.print(
        f"{m['nproc']} cores, {m['cpu']}, {m['memory']} RAM; total {doc['total_wall_s']:.1f} s"
    )

"""The summary table printed at the end of a run (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _rate(x: Any) -> str:
    return f"{float(x) / 1000:,.1f}k/s" if x is not None else "—"


def _ms(x: Any) -> str:
    return f"{float(x):.2f} ms" if x is not None else "—"


def headline(result: dict[str, Any], key: str) -> Any:
    """``key`` of a scenario's result: the median over ``--repeat`` runs when there is one."""
    return result.get("median", {}).get(key, result.get(key))


def peer_ratios(res: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Ours / peer for scheduling and firing rates, and peer / ours for p99 lateness and bytes
    per pending event (so > 1 always means Delayline does better)."""
    out: dict[str, dict[str, float]] = {}
    ours = {
        "schedule": headline(res.get("scheduling", {}), "events_per_s"),
        "fire": headline(res.get("firing", {}), "events_per_s"),
        "p99": headline(res.get("precision", {}), "p99_ms"),
        "bytes": res.get("memory", {}).get("bytes_per_event"),
    }
    for name in ("arq", "bullmq"):
        peer = res.get(name, {})
        if "schedule_events_per_s" not in peer:
            continue
        pairs = {
            "schedule_ours_over_peer": (ours["schedule"], peer["schedule_events_per_s"]),
            "fire_ours_over_peer": (ours["fire"], peer["fire_events_per_s"]),
            "p99_peer_over_ours": (peer["p99_ms"], ours["p99"]),
            "bytes_peer_over_ours": (peer["bytes_per_pending"], ours["bytes"]),
        }
        out[name] = {k: float(a) / float(b) for k, (a, b) in pairs.items() if a is not None and b}
    return out


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
                _rate(headline(s, "events_per_s")),
                "≥ 100k/s",
                f"chunk {s['best_chunk']}" + (" (median)" if "median" in s else ""),
            )
        )
    if "on" in res.get("encryption", {}):
        e = res["encryption"]
        off, on = e["off"], e["on"]
        out.append(
            (
                "enc: schedule → Redis, off / on",
                f"{_rate(off['schedule_events_per_s'])} / {_rate(on['schedule_events_per_s'])}",
                "",
                f"on = {e['schedule_ratio_on_off']:.2f}× off",
            )
        )
        out.append(
            (
                "enc: firing, off / on",
                f"{_rate(off['fire_events_per_s'])} / {_rate(on['fire_events_per_s'])}",
                "",
                f"on = {e['fire_ratio_on_off']:.2f}× off",
            )
        )
        out.append(
            (
                "enc: Redis payload B/event, off / on",
                f"{off['payload_bytes_per_event']:.0f} / {on['payload_bytes_per_event']:.0f}",
                "",
                f"seal {e['seal_us']:.1f} µs, open {e['open_us']:.1f} µs",
            )
        )
    if "events_per_s" in res.get("kafka", {}):
        k = res["kafka"]
        out.append(
            (
                "1b delayed topic → Redis, committed",
                _rate(headline(k, "events_per_s")),
                "",
                f"{k['stored']:,}/{k['events']:,} stored; join {k['group_join_s']:.1f} s"
                + (" (median)" if "median" in k else ""),
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
        if "median" in f:
            out.append(
                (
                    f"2 firing, median of {len(f['repeats'])}",
                    _rate(f["median"]["events_per_s"]),
                    "≥ 50k/s",
                    "best batch per repeat",
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
                    f"3 lateness {run['rate']:g}/s linger {run['linger_ms']:g} "
                    f"lookahead {run.get('lookahead_ms', 2):g} ms",
                    f"p50 {_ms(run['p50_ms'])} p99 {_ms(run['p99_ms'])}",
                    "p99 ≤ 5 ms",
                    f"p99.9 {_ms(run['p99_9_ms'])} max {_ms(run['max_ms'])}",
                )
            )
    prec = res.get("precision", {})
    if "ceiling_raw_produce" in prec:
        raw = prec["ceiling_raw_produce"]
        out.append(
            (
                "  ceiling: raw librdkafka at that rate",
                f"p50 {_ms(raw['p50_ms'])} p99 {_ms(raw['p99_ms'])}",
                "",
                f"ours p99 = {prec['p99_over_raw_produce_p99']:.1f}× its p99",
            )
        )
    if "read_run" in prec:
        run = prec["read_run"]
        out.append(
            (
                f"3 lateness {run['rate']:g}/s, read by a consumer: produce",
                f"p50 {_ms(run['p50_ms'])} p99 {_ms(run['p99_ms'])}",
                "",
                f"p99.9 {_ms(run['p99_9_ms'])} max {_ms(run['max_ms'])}",
            )
        )
        out.append(_read_row("  read", run["read"]))
        raw = prec["read_ceiling"]
        out.append(
            (
                "  ceiling read: raw librdkafka: produce",
                f"p50 {_ms(raw['p50_ms'])} p99 {_ms(raw['p99_ms'])}",
                "",
                "",
            )
        )
        for read in raw["read"]:
            out.append(_read_row("    read", read))
    for read in prec.get("consumer_fetch_wait", {}).get("read", []):
        rate = prec["consumer_fetch_wait"]["rate"]
        out.append(_read_row(f"  raw {rate:g}/s read", read))
    if "median" in prec:
        med = prec["median"]
        out.append(
            (
                f"3 lateness, median of {len(prec['repeats'])} headline runs",
                f"p50 {_ms(med['p50_ms'])} p99 {_ms(med['p99_ms'])}",
                "p99 ≤ 5 ms",
                f"p99.9 {_ms(med['p99_9_ms'])} max {_ms(med['max_ms'])}",
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
    for name in ("arq", "bullmq"):
        peer = res.get(name, {})
        if "schedule_events_per_s" not in peer:
            continue
        prec = peer["precision"]
        out.append(
            (
                f"peer {name}: 1 schedule / 2 fire",
                f"{_rate(peer['schedule_events_per_s'])} / {_rate(peer['fire_events_per_s'])}",
                "",
                f"{peer['bytes_per_pending']:.0f} B/pending",
            )
        )
        out.append(
            (
                f"peer {name}: 3 lateness {prec['rate']:g}/s",
                f"p50 {_ms(prec['p50_ms'])} p99 {_ms(prec['p99_ms'])}",
                "",
                f"fired {prec['fired']:,}/{prec['scheduled']:,}",
            )
        )
    for name, ratios in peer_ratios(res).items():
        out.append(
            (
                f"  ours vs {name}",
                " ".join(f"{k.split('_')[0]} {v:.2f}×" for k, v in ratios.items()),
                "",
                "> 1: Delayline better",
            )
        )
    out += _serve_rows(res.get("serve", {}))
    flood = res.get("flood", {})
    for layout, phases in flood.get("layouts", {}).items():
        for phase in ("rest", "flood"):
            r = phases[phase]
            out.append(
                (
                    f"6 lateness {flood['rate']:g}/s, dispatcher {layout}, {phase}",
                    f"p50 {_ms(r['p50_ms'])} p99 {_ms(r['p99_ms'])}",
                    "flood ≈ rest" if layout == "thread" else "",
                    f"max {_ms(r['p100_ms'])}; fired {r['fired']:,}/{r['events']:,}",
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


def _read_row(label: str, read: dict[str, Any]) -> tuple[str, str, str, str]:
    """A row for read lateness: percentiles, and the median's first and last time window."""
    trend = read.get("p50_by_window_ms") or [[0, float("nan")]]
    return (
        f"{label} (fetch.wait.max.ms {read['fetch_wait_max_ms']})",
        f"p50 {_ms(read['p50_ms'])} p99 {_ms(read['p99_ms'])}",
        "",
        f"p50 first 5 s {_ms(trend[0][1])}, last {_ms(trend[-1][1])}",
    )


def _serve_rows(sv: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The product as shipped (``delayline serve``) beside the bare dispatcher."""
    if "burst" not in sv:
        return []
    b, st, bare = sv["burst"], sv["steady"], sv["bare"]
    return [
        (
            f"serve: {b['events']:,} due at once, read downstream",
            _rate(b["fired_per_s"]),
            "≈ bare",
            f"p50 {_ms(b['p50_ms'])} p99 {_ms(b['p99_ms'])}; load {b['loadavg_1m']:.2f}",
        ),
        (
            "  histories recorded to the end",
            f"{b['histories_completed']}/{b['histories_checked']}",
            "all",
            "sample of the burst's events, 5 s after the last read",
        ),
        (
            f"  bare dispatcher, batch {sv['claim_batch_size']:,}",
            _rate(bare["events_per_s"]),
            "",
            f"serve = {sv['serve_over_bare']:.2f}× bare; load {bare['loadavg_1m']:.2f}",
        ),
        (
            f"serve: {st['rate']:g}/s steady, read downstream",
            f"p50 {_ms(st['p50_ms'])} p99 {_ms(st['p99_ms'])}",
            "",
            f"read {st['read']:,}/{st['scheduled']:,}; load {st['loadavg_1m']:.2f}",
        ),
    ]

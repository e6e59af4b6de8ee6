"""ClickHouse adapter of analytics: writes execution results, reads the merged metrics.

Writes are one Arrow insert per batch (the fastest insert path: BENCHMARKS.md). Reads merge the
hourly aggregate states over the asked range (see ``analytics_schema``), so percentiles over a
day or a week are computed from the executions themselves, never averaged.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from delayline.adapters.clickhouse.analytics_schema import (
    HOURLY_TABLE,
    METRICS_VIEW,
    RESULTS_TABLE,
)
from delayline.domain.events import to_epoch_us, utc_now
from delayline.domain.outcomes import ExecutionResult
from delayline.ports import ClickHouseQueries

Granularity = Literal["hour", "day"]

_CHUNK_ROWS = 500
_UINT8_MAX = 255
_UINT32_MAX = 2**32 - 1

_TS = pa.timestamp("us", tz="UTC")
_SCHEMA = pa.schema(
    [
        ("execution_id", pa.string()),
        ("schedule_id", pa.string()),
        ("correlation_id", pa.string()),
        ("topic", pa.string()),
        ("entity_type", pa.string()),
        ("action", pa.string()),
        ("scheduled_at", _TS),
        ("executed_at", _TS),
        ("delay_seconds", pa.float64()),
        ("status", pa.string()),
        ("error_message", pa.string()),
        ("retry_count", pa.uint8()),
        ("processing_time_ms", pa.uint32()),
        ("node_id", pa.string()),
        ("created_at", _TS),
    ]
)

# Aggregates merged from the hourly states; the same list serves every read.
_MERGED = """
    countMerge(total_executions) AS total_executions,
    countIfMerge(successful_executions) AS successful_executions,
    countIfMerge(failed_executions) AS failed_executions,
    countIfMerge(skipped_executions) AS skipped_executions,
    avgMerge(avg_delay_seconds) AS avg_delay_seconds,
    avgMerge(avg_processing_time_ms) AS avg_processing_time_ms,
    quantilesMerge(0.5, 0.95, 0.99)(delay_quantiles) AS delay_quantiles
"""

# Hour resolution: an hour is in the range when its start is in [floor_hour(start), end).
_RANGE = (
    "hour_start >= toStartOfHour(fromUnixTimestamp64Micro({start_us:Int64}, 'UTC')) "
    "AND hour_start < fromUnixTimestamp64Micro({end_us:Int64}, 'UTC')"
)


class AnalyticsSchemaMissingError(RuntimeError):
    """The analytics tables are not there: the migrations have not been applied."""


class ClickHouseAnalyticsStore:
    """Execution results in, performance metrics out, in one ClickHouse database.

    The database is the client's own unless ``database`` names another.
    """

    def __init__(self, client: ClickHouseQueries, *, database: str | None = None) -> None:
        self._client = client
        self._db = database or client.database

    async def verify_schema(self) -> None:
        """Raise :class:`AnalyticsSchemaMissingError` unless every analytics object exists."""
        rows = await self._client.query(
            "SELECT name FROM system.tables WHERE database = {db:String}", {"db": self._db}
        )
        present = {str(row[0]) for row in rows}
        missing = sorted({RESULTS_TABLE, HOURLY_TABLE, METRICS_VIEW} - present)
        if missing:
            raise AnalyticsSchemaMissingError(
                f"database {self._db!r} lacks {', '.join(missing)}: apply the migrations"
            )

    async def write_results(self, results: Sequence[ExecutionResult]) -> None:
        """Insert ``results`` as one batch (one Arrow insert); nothing for an empty batch."""
        if not results:
            return
        # Building Arrow columns from Python objects is per-row Python work: done in
        # chunks, yielding between them, so a big batch never holds the event loop (and the
        # dispatcher on it) for more than a few milliseconds.
        chunks = []
        for at in range(0, len(results), _CHUNK_ROWS):
            chunks.append(to_arrow(results[at : at + _CHUNK_ROWS]))
            await asyncio.sleep(0)
        table = chunks[0] if len(chunks) == 1 else pa.concat_tables(chunks)
        await self._client.insert_arrow(f"{self._db}.{RESULTS_TABLE}", table)

    async def performance(
        self,
        start: datetime,
        end: datetime,
        *,
        entity_type: str | None = None,
        action: str | None = None,
        topic: str | None = None,
        granularity: Granularity = "hour",
        tenant: str | None = None,
    ) -> list[dict[str, Any]]:
        """Metrics per hour or per UTC day and (entity_type, action, topic), oldest first,
        of ``tenant``'s executions (None: every tenant's, summed).

        Hours whose start is in ``[start rounded down to the hour, end)`` are included. Each
        row has the documented columns (``hour`` is ``None`` by day) plus ``period_start``.
        """
        if granularity not in ("hour", "day"):
            raise ValueError(f"granularity must be 'hour' or 'day', not {granularity!r}")
        params: dict[str, Any] = _range_params(start, end)
        where = [_RANGE]
        filters = (("tenant", tenant), ("entity_type", entity_type), ("action", action))
        for name, value in (*filters, ("topic", topic)):
            if value is not None:
                where.append(f"{name} = {{{name}:String}}")
                params[name] = value
        period = "hour_start" if granularity == "hour" else "toStartOfDay(hour_start)"
        sql = (
            f"SELECT {period} AS period_start, entity_type, action, topic, {_MERGED} "
            f"FROM {self._db}.{HOURLY_TABLE} WHERE {' AND '.join(where)} "
            "GROUP BY period_start, entity_type, action, topic "
            "ORDER BY period_start, entity_type, action, topic"
        )
        rows = await self._client.query(sql, params)
        return [_metrics_row(row, by_hour=granularity == "hour") for row in rows]

    async def summary(
        self, start: datetime, end: datetime, *, top: int = 10, tenant: str | None = None
    ) -> dict[str, Any]:
        """Totals, success rate, lateness (avg, p50/p95/p99) and the ``top`` failing
        (entity_type, action) pairs over the hours of ``[start, end)``, of ``tenant``'s
        executions (None: every tenant's)."""
        params: dict[str, Any] = _range_params(start, end)
        where = _RANGE
        if tenant is not None:
            where += " AND tenant = {tenant:String}"
            params["tenant"] = tenant
        totals = await self._client.query(
            f"SELECT {_MERGED} FROM {self._db}.{HOURLY_TABLE} WHERE {where}", params
        )
        failing = await self._client.query(
            "SELECT entity_type, action, countIfMerge(failed_executions) AS failed, "
            "countMerge(total_executions) AS total "
            f"FROM {self._db}.{HOURLY_TABLE} WHERE {where} "
            "GROUP BY entity_type, action HAVING failed > 0 "
            "ORDER BY failed DESC, entity_type, action LIMIT {top:UInt32}",
            {**params, "top": top},
        )
        total, ok, failed, skipped, avg_delay, avg_ms, quantiles = totals[0]
        p50, p95, p99 = (_num(q) for q in quantiles)
        return {
            "start": start,
            "end": end,
            "total_executions": int(total),
            "successful_executions": int(ok),
            "failed_executions": int(failed),
            "skipped_executions": int(skipped),
            "success_rate": int(ok) / int(total) if total else None,
            "avg_delay_seconds": _num(avg_delay),
            "p50_delay_seconds": p50,
            "p95_delay_seconds": p95,
            "p99_delay_seconds": p99,
            "avg_processing_time_ms": _num(avg_ms),
            "top_failing": [
                {
                    "entity_type": et,
                    "action": act,
                    "failed_executions": int(nf),
                    "total_executions": int(nt),
                    "failure_rate": int(nf) / int(nt),
                }
                for et, act, nf, nt in failing
            ],
        }


def to_arrow(results: Sequence[ExecutionResult]) -> pa.Table:
    """The ``schedule_execution_results`` rows of ``results`` as an Arrow table."""
    created = utc_now()
    events = [r.event for r in results]
    scheduled = pa.array([e.scheduled_at for e in events], type=_TS)
    executed = pa.array([r.executed_at for r in results], type=_TS)
    # ExecutionResult.delay_seconds, computed on whole columns (exact µs, then seconds).
    delay_us = pc.subtract(executed.cast(pa.int64()), scheduled.cast(pa.int64()))
    delay = pc.divide(delay_us.cast(pa.float64()), 1_000_000.0)
    columns: list[Any] = [
        [r.execution_id for r in results],
        [e.schedule_id for e in events],
        [e.correlation_id for e in events],
        [e.topic for e in events],
        [e.entity_type for e in events],
        [e.action for e in events],
        scheduled,
        executed,
        delay,
        [r.outcome.value for r in results],
        [r.error_message for r in results],
        # Clamped: the columns are UInt8 / UInt32, and an out-of-range value must not make
        # the whole batch fail.
        [min(max(r.retry_count, 0), _UINT8_MAX) for r in results],
        [min(max(r.processing_time_ms, 0), _UINT32_MAX) for r in results],
        [r.node_id for r in results],
        [created] * len(results),
    ]
    arrays = [
        col if isinstance(col, pa.Array) else pa.array(col, type=field.type)
        for col, field in zip(columns, _SCHEMA, strict=True)
    ]
    return pa.Table.from_arrays(arrays, schema=_SCHEMA)


def _range_params(start: datetime, end: datetime) -> dict[str, Any]:
    # Epoch microseconds: no time-zone interpretation on either side.
    return {"start_us": to_epoch_us(start), "end_us": to_epoch_us(end)}


def _num(value: Any) -> float | None:
    """A float, or ``None`` for the NaN ClickHouse returns over no rows."""
    number = float(value)
    return None if math.isnan(number) else number


def _utc(value: datetime) -> datetime:
    # chDB may drop the zone of a DateTime('UTC') column: the value is UTC either way.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _metrics_row(row: Sequence[Any], *, by_hour: bool) -> dict[str, Any]:
    period, entity_type, action, topic, total, ok, failed, skipped, delay, ms, quantiles = row
    period_start = _utc(period)
    day: date = period_start.date()
    p50, p95, p99 = (_num(q) for q in quantiles)
    return {
        "period_start": period_start,
        "date": day,
        "hour": period_start.hour if by_hour else None,
        "entity_type": entity_type,
        "action": action,
        "topic": topic,
        "total_executions": int(total),
        "successful_executions": int(ok),
        "failed_executions": int(failed),
        "skipped_executions": int(skipped),
        "avg_delay_seconds": _num(delay),
        "avg_processing_time_ms": _num(ms),
        "p50_delay_seconds": p50,
        "p95_delay_seconds": p95,
        "p99_delay_seconds": p99,
    }

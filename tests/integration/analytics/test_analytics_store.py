"""The analytics numbers for a known set of executions, against real chDB."""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from delayline.adapters.clickhouse.analytics_store import (
    AnalyticsSchemaMissingError,
    ClickHouseAnalyticsStore,
)
from delayline.domain.events import new_event
from delayline.domain.outcomes import ExecutionResult, Outcome

from .conftest import AnalyticsDb

# Two days back from the start of today: inside the 90-day TTL, whole hours and days.
DAY0 = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
DAY1 = DAY0 + timedelta(days=1)


def result(
    executed_at: datetime,
    delay: float,
    outcome: Outcome = Outcome.SUCCESS,
    *,
    entity_type: str = "user",
    action: str = "remind",
    topic: str = "t.a",
    processing_ms: int = 5,
) -> ExecutionResult:
    """One execution ``delay`` seconds late, executed at ``executed_at``."""
    event = new_event(
        topic=topic,
        entity_type=entity_type,
        action=action,
        scheduled_at=executed_at - timedelta(seconds=delay),
        now=executed_at - timedelta(days=1),
    )
    return ExecutionResult(
        execution_id=uuid.uuid4().hex,
        event=event,
        executed_at=executed_at,
        outcome=outcome,
        error_message="boom" if outcome in (Outcome.ERROR, Outcome.TIMEOUT) else None,
        retry_count=1 if outcome is Outcome.ERROR else 0,
        processing_time_ms=processing_ms,
        node_id="node-1",
    )


def quantile(values: Sequence[float], level: float) -> float:
    """Linear interpolation between closest ranks: what ClickHouse's ``quantiles`` returns
    exactly while a merged state holds at most 8192 values (numpy's default method)."""
    ordered = sorted(values)
    index = level * (len(ordered) - 1)
    low = math.floor(index)
    high = math.ceil(index)
    return ordered[low] + (ordered[high] - ordered[low]) * (index - low)


def close(actual: Any, expected: float) -> bool:
    return actual is not None and math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-9)


# A known set: hour 10 of day 0 (40 executions), hour 11 of day 0 (25), hour 5 of day 1 (30).
H10 = [0.001 * (i + 1) ** 2 for i in range(40)]  # 1 ms … 1.6 s, skewed
H11 = [0.5 + 0.1 * i for i in range(25)]  # 0.5 … 2.9 s
D1H5 = [3.0 + 0.25 * i for i in range(30)]  # 3 … 10.25 s


def known_results() -> list[ExecutionResult]:
    out: list[ExecutionResult] = []
    for i, delay in enumerate(H10):
        outcome = Outcome.ERROR if i % 10 == 0 else Outcome.SUCCESS  # 4 errors
        out.append(result(DAY0 + timedelta(hours=10, seconds=i * 60), delay, outcome))
    for i, delay in enumerate(H11):
        outcome = Outcome.SKIPPED if i < 3 else Outcome.TIMEOUT if i == 3 else Outcome.SUCCESS
        out.append(
            result(DAY0 + timedelta(hours=11, seconds=i * 90), delay, outcome, processing_ms=i)
        )
    for i, delay in enumerate(D1H5):
        outcome = Outcome.ERROR if i < 6 else Outcome.SUCCESS
        out.append(
            result(DAY1 + timedelta(hours=5, seconds=i), delay, outcome, entity_type="order")
        )
    return out


async def test_hourly_metrics_match_the_known_executions(analytics_db: AnalyticsDb) -> None:
    await analytics_db.store.write_results(known_results())
    rows = await analytics_db.store.performance(DAY0, DAY1 + timedelta(days=1))
    assert [(r["date"], r["hour"], r["entity_type"]) for r in rows] == [
        (DAY0.date(), 10, "user"),
        (DAY0.date(), 11, "user"),
        (DAY1.date(), 5, "order"),
    ]
    h10, h11, d1 = rows
    assert (h10["total_executions"], h10["successful_executions"]) == (40, 36)
    assert (h10["failed_executions"], h10["skipped_executions"]) == (4, 0)
    assert (h11["total_executions"], h11["successful_executions"]) == (25, 21)
    assert (h11["failed_executions"], h11["skipped_executions"]) == (1, 3)
    assert (d1["total_executions"], d1["failed_executions"]) == (30, 6)
    for row, values in ((h10, H10), (h11, H11), (d1, D1H5)):
        assert close(row["avg_delay_seconds"], sum(values) / len(values))
        assert close(row["p50_delay_seconds"], quantile(values, 0.5))
        assert close(row["p95_delay_seconds"], quantile(values, 0.95))
        assert close(row["p99_delay_seconds"], quantile(values, 0.99))
    assert close(h11["avg_processing_time_ms"], sum(range(25)) / 25)
    assert h10["period_start"] == DAY0 + timedelta(hours=10)


async def test_day_granularity_merges_the_hours(analytics_db: AnalyticsDb) -> None:
    await analytics_db.store.write_results(known_results())
    rows = await analytics_db.store.performance(
        DAY0, DAY1 + timedelta(days=1), granularity="day", entity_type="user"
    )
    assert len(rows) == 1
    (day,) = rows
    assert (day["date"], day["hour"], day["period_start"]) == (DAY0.date(), None, DAY0)
    assert (day["total_executions"], day["successful_executions"]) == (65, 57)
    assert (day["failed_executions"], day["skipped_executions"]) == (5, 3)
    both = H10 + H11
    for level, key in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        assert close(day[f"{key}_delay_seconds"], quantile(both, level))
    # The merged p95 is not the mean of the hourly p95s: the test would see the difference.
    averaged = (quantile(H10, 0.95) + quantile(H11, 0.95)) / 2
    assert not close(day["p95_delay_seconds"], averaged)


async def test_filters_and_range_bounds(analytics_db: AnalyticsDb) -> None:
    store = analytics_db.store
    extra = [
        result(DAY0 + timedelta(hours=10, minutes=5), 1.0, action="expire"),
        result(DAY0 + timedelta(hours=10, minutes=6), 2.0, topic="t.b"),
    ]
    await store.write_results([*known_results(), *extra])
    end = DAY1 + timedelta(days=1)
    by_action = await store.performance(DAY0, end, action="expire")
    assert [(r["action"], r["total_executions"]) for r in by_action] == [("expire", 1)]
    by_topic = await store.performance(DAY0, end, topic="t.b")
    assert [(r["topic"], r["p50_delay_seconds"]) for r in by_topic] == [("t.b", 2.0)]
    orders = await store.performance(DAY0, end, entity_type="order", action="remind")
    assert [r["total_executions"] for r in orders] == [30]
    assert await store.performance(DAY0, end, entity_type="nobody") == []
    # [10:30, 11:00) covers hour 10 (start rounds down) and not hour 11 (end is exclusive).
    window = await store.performance(
        DAY0 + timedelta(hours=10, minutes=30), DAY0 + timedelta(hours=11), action="remind"
    )
    assert [(r["hour"], r["topic"]) for r in window] == [(10, "t.a"), (10, "t.b")]


async def test_summary_over_two_days_merges_percentiles(analytics_db: AnalyticsDb) -> None:
    await analytics_db.store.write_results(known_results())
    summary = await analytics_db.store.summary(DAY0, DAY1 + timedelta(days=1))
    everything = H10 + H11 + D1H5
    assert summary["total_executions"] == 95
    assert summary["successful_executions"] == 36 + 21 + 24
    assert summary["failed_executions"] == 4 + 1 + 6
    assert summary["skipped_executions"] == 3
    assert close(summary["success_rate"], 81 / 95)
    assert close(summary["avg_delay_seconds"], sum(everything) / 95)
    for level, key in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        assert close(summary[f"{key}_delay_seconds"], quantile(everything, level))
    assert summary["top_failing"] == [
        {
            "entity_type": "order",
            "action": "remind",
            "failed_executions": 6,
            "total_executions": 30,
            "failure_rate": 0.2,
        },
        {
            "entity_type": "user",
            "action": "remind",
            "failed_executions": 5,
            "total_executions": 65,
            "failure_rate": 5 / 65,
        },
    ]


async def test_summary_of_an_empty_range(analytics_db: AnalyticsDb) -> None:
    summary = await analytics_db.store.summary(DAY0, DAY1)
    assert summary["total_executions"] == 0
    assert summary["success_rate"] is None
    assert summary["p99_delay_seconds"] is None
    assert summary["avg_delay_seconds"] is None
    assert summary["top_failing"] == []


async def test_spec_view_and_raw_rows(analytics_db: AnalyticsDb) -> None:
    results = known_results()
    await analytics_db.store.write_results(results)
    db = analytics_db.name
    view = await analytics_db.client.query(
        "SELECT date, hour, entity_type, action, topic, total_executions, "
        "successful_executions, failed_executions, skipped_executions, avg_delay_seconds, "
        "avg_processing_time_ms, p50_delay_seconds, p95_delay_seconds, p99_delay_seconds "
        f"FROM {db}.schedule_performance_metrics ORDER BY date, hour"
    )
    assert [row[:9] for row in view] == [
        (DAY0.date(), 10, "user", "remind", "t.a", 40, 36, 4, 0),
        (DAY0.date(), 11, "user", "remind", "t.a", 25, 21, 1, 3),
        (DAY1.date(), 5, "order", "remind", "t.a", 30, 24, 6, 0),
    ]
    assert close(view[2][13], quantile(D1H5, 0.99))
    first = results[0]
    raw = await analytics_db.client.query(
        "SELECT schedule_id, status, error_message, retry_count, delay_seconds, "
        f"toUnixTimestamp64Micro(executed_at) FROM {db}.schedule_execution_results "
        "WHERE execution_id = {id:String}",
        {"id": first.execution_id},
    )
    assert raw == [
        (
            first.event.schedule_id,
            "error",
            "boom",
            1,
            pytest.approx(first.delay_seconds),
            int(first.executed_at.timestamp() * 1_000_000),
        )
    ]
    count = await analytics_db.client.query(f"SELECT count() FROM {db}.schedule_execution_results")
    assert count == [(95,)]


async def test_verify_schema(analytics_db: AnalyticsDb) -> None:
    await analytics_db.store.verify_schema()
    missing = ClickHouseAnalyticsStore(analytics_db.client, database="no_such_db")
    with pytest.raises(AnalyticsSchemaMissingError, match="apply the migrations"):
        await missing.verify_schema()


async def test_a_big_batch_is_one_insert_built_in_chunks(analytics_db: AnalyticsDb) -> None:
    start = DAY1 + timedelta(hours=3)
    batch = [result(start + timedelta(seconds=i), i / 1000) for i in range(1234)]
    await analytics_db.store.write_results(batch)
    rows = await analytics_db.store.performance(start, start + timedelta(hours=1))
    assert [r["total_executions"] for r in rows] == [1234]
    assert close(rows[0]["p99_delay_seconds"], quantile([i / 1000 for i in range(1234)], 0.99))

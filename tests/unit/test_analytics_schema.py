"""The analytics migrations format cleanly and the Arrow rows match the table's columns."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

from delayline.adapters.clickhouse.analytics_schema import ANALYTICS_MIGRATIONS, RESULTS_TABLE
from delayline.adapters.clickhouse.analytics_store import to_arrow
from delayline.domain.events import new_event
from delayline.domain.outcomes import ExecutionResult, Outcome

SPEC_COLUMNS = [
    "execution_id",
    "schedule_id",
    "correlation_id",
    "topic",
    "entity_type",
    "action",
    "scheduled_at",
    "executed_at",
    "delay_seconds",
    "status",
    "error_message",
    "retry_count",
    "processing_time_ms",
    "node_id",
    "created_at",
]


def test_versions_are_100_and_up_ascending_and_format_cleanly() -> None:
    versions = [v for v, _name, _stmts in ANALYTICS_MIGRATIONS]
    assert versions == sorted(set(versions))
    assert min(versions) >= 100
    for _version, _name, statements in ANALYTICS_MIGRATIONS:
        for statement in statements:
            sql = statement.format(db="somedb", ttl_days=7)
            assert "{" not in sql
            assert "}" not in sql
    first = ANALYTICS_MIGRATIONS[0][2][0].format(db="d", ttl_days=7)
    assert "INTERVAL 7 DAY" in first
    assert f"d.{RESULTS_TABLE}" in first
    declared = re.findall(r"^\s+(\w+) [A-Z]", first.split(")\nENGINE")[0], re.MULTILINE)
    assert declared == SPEC_COLUMNS


def test_arrow_rows_have_the_spec_columns_and_clamped_counts() -> None:
    due = datetime(2026, 3, 1, 12, tzinfo=UTC)
    event = new_event(topic="t", entity_type="user", action="a", scheduled_at=due, now=due)
    done = ExecutionResult(
        execution_id=uuid.uuid4().hex,
        event=event,
        executed_at=due + timedelta(seconds=1.5),
        outcome=Outcome.TIMEOUT,
        error_message="slow",
        retry_count=999,
        processing_time_ms=-4,
        node_id="n1",
    )
    table = to_arrow([done])
    assert table.column_names == SPEC_COLUMNS
    row = table.to_pylist()[0]
    assert row["status"] == "timeout"
    assert row["delay_seconds"] == 1.5
    assert (row["retry_count"], row["processing_time_ms"]) == (255, 0)
    assert row["executed_at"] == due + timedelta(seconds=1.5)
    assert row["error_message"] == "slow"

"""The schema on a ClickHouse cluster (``SCHEDULES_CLICKHOUSE_CLUSTER``).

``ON CLUSTER`` and ``Replicated*MergeTree`` need ZooKeeper/Keeper, which chDB does not have:
their text is checked exactly here. The ``Distributed`` tables over local tables do run in
chDB (a cluster of one shard, this process, defined in a ``config.xml``): the migrations and
the long-term store run on them in a subprocess (``cluster_node.py``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from delayline.adapters.clickhouse.cluster_ddl import for_cluster
from delayline.adapters.clickhouse.migrations import run_migrations
from delayline.settings import Settings

NODE = Path(__file__).with_name("cluster_node.py")
CONFIG = """<clickhouse>
    <tcp_port>9000</tcp_port>
    <remote_servers>
        <delayline_test>
            <shard><replica><host>localhost</host><port>9000</port></replica></shard>
        </delayline_test>
    </remote_servers>
    <macros><shard>01</shard><replica>r1</replica></macros>
</clickhouse>
"""


class Recorder:
    """A client that records the statements it is given."""

    database = "delayline"
    cluster = "prod"

    def __init__(self) -> None:
        self.statements: list[str] = []

    async def query(
        self, sql: str, parameters: Any = None, *, column_formats: Any = None
    ) -> list[Any]:
        return []

    async def query_arrow(self, sql: str, parameters: Any = None) -> pa.Table:
        raise AssertionError("migrations never read Arrow")

    async def command(self, sql: str, parameters: Any = None) -> None:
        self.statements.append(sql)

    async def insert_arrow(self, table: str, data: pa.Table) -> None:
        raise AssertionError("migrations never insert Arrow")


async def test_migrations_on_a_cluster_create_replicated_local_and_distributed_tables() -> None:
    client = Recorder()
    await run_migrations(client, ttl_days=90)
    ddl = [s for s in client.statements if not s.startswith("INSERT")]
    assert ddl[:3] == [
        "CREATE DATABASE IF NOT EXISTS delayline ON CLUSTER prod",
        "CREATE TABLE IF NOT EXISTS delayline.schema_migrations_local ON CLUSTER prod "
        "(version UInt32, name String, applied_at DateTime64(6, 'UTC')) "
        "ENGINE = ReplicatedReplacingMergeTree("
        "'/clickhouse/tables/{shard}/delayline/schema_migrations_local', '{replica}') "
        "ORDER BY version",
        "CREATE TABLE IF NOT EXISTS delayline.schema_migrations ON CLUSTER prod "
        "AS delayline.schema_migrations_local "
        "ENGINE = Distributed(prod, delayline, schema_migrations_local, rand())",
    ]
    events_local = ddl[3]
    assert events_local.startswith(
        "CREATE TABLE IF NOT EXISTS delayline.event_schedules_local ON CLUSTER prod (\n"
    )
    assert (
        "ENGINE = ReplicatedReplacingMergeTree("
        "'/clickhouse/tables/{shard}/delayline/event_schedules_local', '{replica}', version)\n"
        "PARTITION BY toYYYYMM(created_at)\nORDER BY schedule_id\n"
        "TTL toDateTime(retain_from) + INTERVAL 90 DAY"
    ) in events_local
    assert ddl[4:11] == [
        "CREATE TABLE IF NOT EXISTS delayline.event_schedules ON CLUSTER prod "
        "AS delayline.event_schedules_local "
        "ENGINE = Distributed(prod, delayline, event_schedules_local, cityHash64(schedule_id))",
        "ALTER TABLE delayline.event_schedules_local ON CLUSTER prod ADD COLUMN IF NOT EXISTS "
        "listed_at DateTime64(6, 'UTC') DEFAULT scheduled_at",
        "ALTER TABLE delayline.event_schedules ON CLUSTER prod ADD COLUMN IF NOT EXISTS "
        "listed_at DateTime64(6, 'UTC') DEFAULT scheduled_at",
        "ALTER TABLE delayline.event_schedules_local ON CLUSTER prod MODIFY SETTING "
        "deduplicate_merge_projection_mode = 'rebuild', "
        "lightweight_mutation_projection_mode = 'rebuild'",
        "ALTER TABLE delayline.event_schedules_local ON CLUSTER prod "
        "ADD PROJECTION IF NOT EXISTS by_listed (SELECT * ORDER BY listed_at)",
        "OPTIMIZE TABLE delayline.event_schedules_local ON CLUSTER prod FINAL",
        "ALTER TABLE delayline.event_schedules_local ON CLUSTER prod "
        "MATERIALIZE PROJECTION by_listed SETTINGS mutations_sync = 2",
    ]
    assert (
        "ENGINE = Distributed(prod, delayline, event_lifecycle_local, cityHash64(schedule_id))"
        in ddl[12]
    )
    mv = next(s for s in ddl if "MATERIALIZED VIEW" in s)
    assert mv.startswith(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS delayline.schedule_performance_metrics_mv "
        "ON CLUSTER prod TO delayline.schedule_performance_metrics_hourly_local AS\n"
    )
    assert "FROM delayline.schedule_execution_results_local\n" in mv
    assert "GROUP BY hour_start, tenant, entity_type, action, topic" in mv
    hourly = next(s for s in ddl if "schedule_performance_metrics_hourly_local ON CLUSTER" in s)
    assert "ORDER BY (hour_start, tenant, entity_type, action, topic)" in hourly
    view = ddl[-1]
    assert view.startswith(
        "CREATE VIEW IF NOT EXISTS delayline.schedule_performance_metrics ON CLUSTER prod AS\n"
    )
    assert "FROM delayline.schedule_performance_metrics_hourly\n" in view
    assert all(" IF NOT EXISTS " in s or s.startswith("OPTIMIZE") or "MODIFY SETTING" in s
               or "MATERIALIZE PROJECTION" in s for s in ddl)  # fmt: skip


def test_a_statement_without_a_cluster_form_is_refused() -> None:
    with pytest.raises(ValueError, match="no cluster form"):
        for_cluster("DROP TABLE delayline.event_schedules", "prod")


def test_the_cluster_setting_is_empty_by_default_and_checked() -> None:
    assert Settings.model_validate({}).clickhouse_cluster == ""
    assert Settings.model_validate({"clickhouse_cluster": "prod_1"}).clickhouse_cluster == "prod_1"
    with pytest.raises(ValueError, match="clickhouse_cluster"):
        Settings.model_validate({"clickhouse_cluster": "prod; DROP"})


def test_the_store_runs_on_distributed_tables_in_chdb(tmp_path: Path) -> None:
    (tmp_path / "config.xml").write_text(CONFIG)
    done = subprocess.run(
        [sys.executable, str(NODE), str(tmp_path / "data")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["migrated", "store", "OK"]

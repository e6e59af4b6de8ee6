"""Migrations: versioned, recorded, idempotent."""

from __future__ import annotations

import pytest
from clickhouse_connect.driver.exceptions import ClickHouseError

from delayline.adapters.clickhouse.client import ClickHouseClient
from delayline.adapters.clickhouse.migrations import (
    EVENTS_TABLE,
    MIGRATIONS_TABLE,
    all_migrations,
    run_migrations,
)


async def test_migrations_run_twice_are_a_no_op(clickhouse_root: ClickHouseClient) -> None:
    import uuid

    client = clickhouse_root.with_database(f"m_{uuid.uuid4().hex[:12]}")
    await client.start()
    try:
        lines: list[str] = []
        applied = await run_migrations(client, ttl_days=30, progress=lines.append)
        assert applied == [name for _v, name, _s in all_migrations()]
        assert any("applying 001" in line for line in lines)
        recorded = await client.query(
            f"SELECT version, name FROM {client.database}.{MIGRATIONS_TABLE} ORDER BY version"
        )
        assert [(int(v), n) for v, n in recorded] == [(v, n) for v, n, _s in all_migrations()]

        lines.clear()
        assert await run_migrations(client, ttl_days=30, progress=lines.append) == []
        assert lines == [f"database {client.database}: schema is up to date"]
        again = await client.query(f"SELECT count() FROM {client.database}.{MIGRATIONS_TABLE}")
        assert again[0][0] == len(recorded)

        ddl = await client.query(f"SHOW CREATE TABLE {client.database}.{EVENTS_TABLE}")
        text = str(ddl[0][0])
        assert "ReplacingMergeTree(version)" in text
        assert "toIntervalDay(30)" in text or "INTERVAL 30 DAY" in text
    finally:
        await client.command(f"DROP DATABASE IF EXISTS {client.database} SYNC")


async def test_a_failed_migration_is_not_recorded(ch_client: ClickHouseClient) -> None:
    bad = [(7, "broken", ["CREATE TABLE {db}.nope (x UInt8) ENGINE = NoSuchEngine"])]
    with pytest.raises(ClickHouseError, match="NoSuchEngine"):
        await run_migrations(ch_client, ttl_days=1, migrations=bad)
    good = [(7, "fixed", ["CREATE TABLE IF NOT EXISTS {db}.nope (x UInt8) ENGINE = Memory"])]
    assert await run_migrations(ch_client, ttl_days=1, migrations=good) == ["fixed"]

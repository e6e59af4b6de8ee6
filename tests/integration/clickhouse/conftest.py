"""ClickHouse for these tests: ONE chDB folder for the session, one database per test.

chDB lets a process open a single data folder, ever, so the folder is the one the analytics
tests use too (``$DELAYLINE_TEST_CHDB_DIR`` or ``<basetemp>/chdb``). With
``SCHEDULES_TEST_CLICKHOUSE_URL`` set (``http://user:pass@host:8123``) the same tests run
against that ClickHouse server instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from delayline.adapters.clickhouse.client import ClickHouseClient
from delayline.adapters.clickhouse.long_term_store import ClickHouseLongTermStore
from delayline.adapters.clickhouse.migrations import run_migrations

SERVER_URL_ENV = "SCHEDULES_TEST_CLICKHOUSE_URL"


@pytest.fixture(scope="session")
def clickhouse_dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The server URL from the environment, else the session's chDB folder as a DSN."""
    url = os.environ.get(SERVER_URL_ENV)
    if url:
        return url
    configured = os.environ.get("DELAYLINE_TEST_CHDB_DIR")
    path = Path(configured) if configured else tmp_path_factory.getbasetemp() / "chdb"
    path.mkdir(parents=True, exist_ok=True)
    return f"chdb://{path.resolve().as_posix()}"


@pytest.fixture(scope="session")
async def clickhouse_root(clickhouse_dsn: str) -> AsyncIterator[ClickHouseClient]:
    """The session's one connection (closing it would stop the embedded engine)."""
    client = ClickHouseClient(clickhouse_dsn, "default")
    await client.start()
    yield client
    await client.stop()


@pytest.fixture
async def ch_client(clickhouse_root: ClickHouseClient) -> AsyncIterator[ClickHouseClient]:
    """A client on a fresh database of this test's own, migrated; dropped afterwards."""
    client = clickhouse_root.with_database(f"t_{uuid.uuid4().hex[:12]}")
    await client.start()
    await run_migrations(client, ttl_days=90)
    yield client
    await client.command(f"DROP DATABASE IF EXISTS {client.database} SYNC")
    await client.stop()


@pytest.fixture
def lt_store(ch_client: ClickHouseClient) -> ClickHouseLongTermStore:
    """The long-term store on this test's database."""
    return ClickHouseLongTermStore(ch_client)

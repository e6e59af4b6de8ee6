"""ClickHouse for the analytics tests: one chDB folder per session, one database per test.

chDB lets a process open a single data folder, ever: every ClickHouse fixture of the suite
must use the same folder. ``analytics_dsn`` computes it exactly as
``tests/integration/clickhouse/conftest.py`` does (``$SCHEDULES_TEST_CLICKHOUSE_URL`` for a
server, else ``$DELAYLINE_TEST_CHDB_DIR`` or ``<basetemp>/chdb``), so both folders' tests share
it; a suite-wide fixture in ``tests/conftest.py`` can replace both.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from delayline.adapters.clickhouse.analytics_store import ClickHouseAnalyticsStore
from delayline.adapters.clickhouse.client import ClickHouseClient
from delayline.adapters.clickhouse.migrations import run_migrations


@pytest.fixture(scope="session")
def analytics_dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The server URL from the environment, else the session's chDB folder as a DSN."""
    url = os.environ.get("SCHEDULES_TEST_CLICKHOUSE_URL")
    if url:
        return url
    configured = os.environ.get("DELAYLINE_TEST_CHDB_DIR")
    path = Path(configured) if configured else tmp_path_factory.getbasetemp() / "chdb"
    path.mkdir(parents=True, exist_ok=True)
    return f"chdb://{path.resolve().as_posix()}"


@pytest.fixture(scope="session")
async def analytics_root(analytics_dsn: str) -> AsyncIterator[ClickHouseClient]:
    """One connection for the session (closing it would stop the embedded engine)."""
    client = ClickHouseClient(analytics_dsn, "default")
    await client.start()
    yield client
    await client.stop()


@dataclass
class AnalyticsDb:
    """A fresh, migrated database of one test, its client and the analytics store on it."""

    client: ClickHouseClient
    store: ClickHouseAnalyticsStore

    @property
    def name(self) -> str:
        """The database's name."""
        return self.client.database

    async def recreate(self) -> None:
        """Create the database again and migrate it (after a test dropped it)."""
        await self.client.start()
        await run_migrations(self.client, ttl_days=90)


@pytest.fixture
async def analytics_db(analytics_root: ClickHouseClient) -> AsyncIterator[AnalyticsDb]:
    """A database of its own for each test, with every migration applied; dropped after."""
    client = analytics_root.with_database(f"a_{uuid.uuid4().hex[:12]}")
    db = AnalyticsDb(client, ClickHouseAnalyticsStore(client))
    await db.recreate()
    yield db
    await client.command(f"DROP DATABASE IF EXISTS {client.database} SYNC")
    await client.stop()

"""ClickHouse for the analytics tests: the session's one engine (``clickhouse_root`` in
``tests/conftest.py``), one database per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from delayline.adapters.clickhouse.analytics_store import ClickHouseAnalyticsStore
from delayline.adapters.clickhouse.client import ClickHouseClient
from delayline.adapters.clickhouse.migrations import run_migrations


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
async def analytics_db(clickhouse_root: ClickHouseClient) -> AsyncIterator[AnalyticsDb]:
    """A database of its own for each test, with every migration applied; dropped after."""
    client = clickhouse_root.with_database(f"a_{uuid.uuid4().hex[:12]}")
    db = AnalyticsDb(client, ClickHouseAnalyticsStore(client))
    await db.recreate()
    yield db
    await client.command(f"DROP DATABASE IF EXISTS {client.database} SYNC")
    await client.stop()

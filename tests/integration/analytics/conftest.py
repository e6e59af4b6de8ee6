"""chDB for the analytics tests: one data folder per session, one database per test.

chDB lets a process open a single data folder, ever: every chDB fixture of the suite must use
the same folder. ``chdb_dir`` is that folder (``$DELAYLINE_TEST_CHDB_DIR`` or
``<basetemp>/chdb``); a suite-wide ``tests/conftest.py`` fixture should replace it.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import clickhouse_connect
import pyarrow as pa
import pytest

from delayline.adapters.clickhouse.analytics_schema import ANALYTICS_MIGRATIONS
from delayline.adapters.clickhouse.analytics_store import ClickHouseAnalyticsStore


class ChdbShim:
    """The ``AnalyticsClient`` calls over clickhouse-connect, on one dedicated thread."""

    database = "default"

    def __init__(self, client: Any) -> None:
        self.raw = client
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chdb-test")

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def query(
        self, sql: str, parameters: Mapping[str, Any] | None = None
    ) -> Sequence[Sequence[Any]]:
        result = await self._call(lambda: self.raw.query(sql, parameters=parameters))
        return list(result.result_rows)

    async def command(self, sql: str) -> None:
        await self._call(self.raw.command, sql)

    async def insert_arrow(self, table: str, data: pa.Table) -> None:
        await self._call(self.raw.insert_arrow, table, data)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.raw.close()


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's single chDB data folder."""
    configured = os.environ.get("DELAYLINE_TEST_CHDB_DIR")
    path = Path(configured) if configured else tmp_path_factory.getbasetemp() / "chdb"
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


@pytest.fixture(scope="session")
def analytics_client(chdb_dir: Path) -> Iterator[ChdbShim]:
    """One client on the session's chDB folder, kept open (closing it stops the engine)."""
    shim = ChdbShim(clickhouse_connect.get_client(dsn=f"chdb://{chdb_dir.as_posix()}"))
    yield shim
    shim.close()


@dataclass
class AnalyticsDb:
    """A fresh database with the analytics schema, and a store on it."""

    name: str
    client: ChdbShim
    store: ClickHouseAnalyticsStore


@pytest.fixture
async def analytics_db(analytics_client: ChdbShim) -> AsyncIterator[AnalyticsDb]:
    """A database of its own for each test, with the analytics migrations applied."""
    name = f"analytics_{uuid.uuid4().hex[:12]}"
    await analytics_client.command(f"CREATE DATABASE {name}")
    for _version, _title, statements in ANALYTICS_MIGRATIONS:
        for statement in statements:
            await analytics_client.command(statement.format(db=name, ttl_days=90))
    yield AnalyticsDb(
        name, analytics_client, ClickHouseAnalyticsStore(analytics_client, database=name)
    )
    await analytics_client.command(f"DROP DATABASE IF EXISTS {name} SYNC")

"""Session-wide real servers: Valkey and a Tansu broker on free loopback ports, one chDB."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from delayline.adapters.clickhouse.client import ClickHouseClient
from delayline.adapters.clickhouse.long_term_store import ClickHouseLongTermStore
from delayline.adapters.clickhouse.migrations import run_migrations
from delayline.adapters.embedded import EmbeddedTansu, EmbeddedValkey
from delayline.adapters.redis_store import RedisNearTermStore


@pytest.fixture(scope="session")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    """One Valkey server for the session (tests isolate themselves by key prefix)."""
    server = EmbeddedValkey(tmp_path_factory.mktemp("valkey"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedTansu]:
    """One Tansu broker for the session (tests isolate themselves by topic name)."""
    server = EmbeddedTansu(log_path=tmp_path_factory.mktemp("tansu") / "tansu.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def unique() -> str:
    """A short unique token for key prefixes and topic names."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def redis_client(valkey: EmbeddedValkey) -> AsyncIterator[Redis]:
    """A client of the session's Valkey."""
    client = Redis.from_url(valkey.url)
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_client: Redis, unique: str) -> AsyncIterator[RedisNearTermStore]:
    """A near-term store under its own key prefix, removed afterwards."""
    near = RedisNearTermStore(redis_client, prefix=f"t-{unique}", result_ttl_seconds=600)
    yield near
    await near.delete_all()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A fresh data directory."""
    return tmp_path / "data"


# --- ClickHouse: ONE chDB folder per session (chDB allows one per process), a database per test


@pytest.fixture(scope="session")
def clickhouse_dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``$SCHEDULES_TEST_CLICKHOUSE_URL`` (a server) or the session's chDB folder."""
    url = os.environ.get("SCHEDULES_TEST_CLICKHOUSE_URL")
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
    """A client on a fresh, migrated database of this test's own; dropped afterwards."""
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

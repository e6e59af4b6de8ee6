"""Session-wide real servers: a Valkey and a Tansu broker on free loopback ports."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

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

"""Concurrent calls are back-pressure, never an outage: they wait for a pooled Redis connection
instead of failing, a full pool opens no breaker, and the firing path has its own connections
and breaker, so events fire while the API's breaker is open (real servers). The HTTP burst
against a served process is in tests/faults/test_request_burst.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from delayline.adapters.embedded import EmbeddedTansu, EmbeddedValkey, free_port
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.bootstrap import Application
from delayline.domain.events import ScheduledEvent
from delayline.firing_runtime import redis_client
from delayline.resilience import BreakerState
from tests.support import TopicReader

API = "/api/v1/schedules"
BURST = 1000
DAY = 86400


@pytest.fixture
async def app(
    valkey: EmbeddedValkey,
    broker: EmbeddedTansu,
    clickhouse_dsn: str,
    clickhouse_root: object,  # the session's engine stays open: this app shares its folder
    unique: str,
    tmp_path: Path,
) -> AsyncIterator[Application]:
    from delayline.settings import load_settings

    settings = load_settings(
        redis_url=valkey.url,
        redis_key_prefix=f"burst-{unique}",
        kafka_bootstrap_servers=broker.bootstrap_servers,
        clickhouse_dsn=clickhouse_dsn,
        clickhouse_database=f"burst_{unique}",
        data_dir=tmp_path,
        api_port=free_port(),
        redis_processing_interval=1,
        redis_pool_timeout=60,  # a loaded 2-core test machine must not turn waits into 503s
    )
    application = Application(settings, roles={"schedule", "fire", "api"})
    await application.start()
    yield application
    await application.stop()


def _breakers_closed(app: Application) -> None:
    states = {name: breaker.state for name, breaker in app.breakers.items()}
    assert all(state is BreakerState.CLOSED for state in states.values()), states


async def test_concurrent_schedule_calls_in_one_process_all_succeed(
    app: Application, unique: str
) -> None:
    service = app.service

    async def one(i: int) -> list[bool]:
        event = service.build_event(topic=f"calls-{unique}", body=f"{i}", delay_seconds=3600)
        return await service.schedule_events([event])

    results = await asyncio.gather(*(one(i) for i in range(300)), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, f"{len(failures)} failed, first: {failures[0]!r}"
    assert all(r == [True] for r in results)
    _breakers_closed(app)


async def test_an_open_api_breaker_does_not_stop_firing(
    app: Application, valkey: EmbeddedValkey, broker: EmbeddedTansu, unique: str
) -> None:
    topic = f"isolated-{unique}"
    reader = TopicReader(broker.bootstrap_servers, topic)
    breaker = app.breakers["redis"]
    for _ in range(10):
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    client = redis_client(valkey.url, max_connections=4, pool_timeout=5)
    try:  # scheduled by another process's store while this one's API breaker is open
        near = RedisNearTermStore(client, prefix=app.settings.redis_key_prefix)
        event: ScheduledEvent = app.service.build_event(topic=topic, body="x", delay_seconds=0.3)
        assert await near.schedule([event]) == [True]
        fired = await asyncio.to_thread(reader.read, 1, 20)
        assert [m.value for m in fired] == [b"x"]
        assert app.breakers["redis_firing"].state is BreakerState.CLOSED
    finally:
        await client.aclose()
        reader.close()

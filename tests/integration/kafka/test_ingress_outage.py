"""The store goes down under the consumer: it pauses without committing, then resumes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from delayline.adapters.embedded import EmbeddedValkey
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.clock import SystemClock
from delayline.services.scheduler import SchedulerService
from tests.integration.kafka.conftest import Ingress, until

HDRS: list[tuple[str, bytes | None]] = [("x-topic", b"t"), ("x-delay-seconds", b"600")]


@pytest.mark.faults
async def test_store_outage_pauses_then_resumes(
    make_ingress: Callable[[int], Ingress], tmp_path: Path
) -> None:
    own = EmbeddedValkey(tmp_path / "valkey", appendfsync="always")
    own.start()
    client = Redis.from_url(own.url, socket_timeout=2, socket_connect_timeout=1)
    store = RedisNearTermStore(client, prefix="outage")
    ingress = make_ingress(1)
    ingress.service = SchedulerService(store, SystemClock())
    consumer = ingress.consumer(retry_initial=0.05, retry_max=0.5)
    try:
        await consumer.start()
        [first] = ingress.produce((None, b"before", HDRS))

        async def first_committed() -> bool:
            return ingress.committed(1)[0] == first.offset + 1

        await until(first_committed)
        own.kill()
        sent = ingress.produce(*[(None, f"during-{i}".encode(), HDRS) for i in range(5)])

        async def paused() -> bool:
            return consumer.stats.paused

        await until(paused)
        assert ingress.committed(1)[0] == first.offset + 1  # nothing committed while down
        own.start()

        async def resumed() -> bool:
            done = ingress.committed(1)[0] == sent[-1].offset + 1
            return done and not consumer.stats.paused

        await until(resumed)
        assert consumer.stats.pauses >= 1
        assert (await store.counts())["pending"] == 6
        assert consumer.stats.scheduled == 6
    finally:
        await consumer.stop()
        await client.aclose()
        own.stop()

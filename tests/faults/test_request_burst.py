"""A burst of 1,000 concurrent requests against the served app is back-pressure, not an outage:
every request is stored (both tiers), no breaker opens, and events due meanwhile still fire."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from delayline.adapters.embedded import EmbeddedTansu, EmbeddedValkey
from tests.faults.conftest import Row, service_env
from tests.faults.harness import ServiceProcess, TopicCollector
from tests.support import create_topics

pytestmark = pytest.mark.faults

API = "/api/v1/schedules"
BURST = 1000
MEANWHILE = 20
FAR_EVERY = 10
"""Every tenth event of the burst is due in 30 days: the long-term tier."""


async def _burst(base: str, topic: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=BURST)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:

        async def post(i: int) -> httpx.Response:
            delay = 30 * 86400 if i % FAR_EVERY == 0 else 3
            body = {"topic": topic, "body": f"burst-{i}", "delay_seconds": delay}
            return await http.post(API, json=body)

        return list(await asyncio.gather(*(post(i) for i in range(BURST))))


def test_a_thousand_concurrent_posts_are_stored_and_firing_goes_on(
    tmp_path: Path,
    run_id: str,
    make_valkey: Callable[[str], EmbeddedValkey],
    own_broker: EmbeddedTansu,
    make_service: Callable[[dict[str, str]], ServiceProcess],
    reliability_rows: list[Row],
) -> None:
    # A wait bound a loaded 2-core test machine cannot reach (waiting is what is tested here),
    # and room for the burst beside the API's own connection cap.
    env = service_env(
        tmp_path,
        make_valkey("everysec"),
        own_broker,
        run_id,
        SCHEDULES_REDIS_POOL_TIMEOUT="60",
        SCHEDULES_API_MAX_CONNECTIONS=str(2 * BURST),
    )
    service = make_service(env)
    topic = f"burst-{run_id}"
    create_topics(own_broker.bootstrap_servers, topic, partitions=4)
    service.start()
    collector = TopicCollector(own_broker.bootstrap_servers, {topic: 4})
    collector.start()
    try:
        with httpx.Client(base_url=service.base_url, timeout=30) as http:
            meanwhile = [
                http.post(
                    API, json={"topic": topic, "body": f"early-{i}", "delay_seconds": 1 + i / 10}
                )
                for i in range(MEANWHILE)
            ]
        assert {r.status_code for r in meanwhile} == {201}, [r.text for r in meanwhile]
        started = time.time()
        answers = asyncio.run(_burst(service.base_url, topic))
        took = time.time() - started
        codes = [r.status_code for r in answers]
        assert codes.count(201) == BURST, {c: codes.count(c) for c in set(codes)}

        ids = [r.json()["schedule_id"] for r in answers]
        near = {sid for i, sid in enumerate(ids) if i % FAR_EVERY}
        early = {r.json()["schedule_id"] for r in meanwhile}
        missing = collector.wait_for(near | early, timeout=90)
        assert not missing, f"{len(missing)} accepted events never fired"
        with httpx.Client(base_url=service.base_url, timeout=30) as http:
            for sid in ids[::FAR_EVERY]:
                stored = http.get(f"{API}/{sid}")
                assert stored.status_code == 200, stored.text
                assert stored.json()["status"] == "pending"
            health = http.get(f"{API}/monitoring/health").json()
        assert set(health["breakers"].values()) == {"closed"}, health["breakers"]
    finally:
        collector.stop()
    reliability_rows.append(
        Row(
            scenario=f"{BURST} concurrent POSTs (both tiers)",
            load=BURST + MEANWHILE,
            faults="burst: 10× the Redis pool",
            bad_inputs=0,
            lost=0,
            duplicates=0,
            health_s=None,
            firing_s=None,
            note=f"all 201 in {took:.1f} s; no breaker opened",
        )
    )

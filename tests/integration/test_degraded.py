"""Degraded running: ClickHouse unavailable while the whole application serves (real servers)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from delayline.adapters.embedded import EmbeddedTansu, EmbeddedValkey, free_port
from delayline.bootstrap import Application
from delayline.domain.events import utc_now
from delayline.settings import load_settings
from tests.support import TopicReader

pytestmark = pytest.mark.faults
API = "/api/v1/schedules"


@pytest.fixture
async def app(
    valkey: EmbeddedValkey,
    broker: EmbeddedTansu,
    clickhouse_dsn: str,
    clickhouse_root: object,  # the session's engine stays open: this app shares its folder
    unique: str,
    tmp_path: Path,
) -> AsyncIterator[Application]:
    settings = load_settings(
        redis_url=valkey.url,
        redis_key_prefix=f"deg-{unique}",
        kafka_bootstrap_servers=broker.bootstrap_servers,
        clickhouse_dsn=clickhouse_dsn,
        clickhouse_database=f"deg_{unique}",
        data_dir=tmp_path,
        api_port=free_port(),
        redis_processing_interval=1,
    )
    application = Application(settings, roles={"schedule", "fire", "api"})
    await application.start()
    yield application
    await application.stop()


def _outage(application: Application) -> Callable[[], None]:
    """Make every ClickHouse call fail as if the server were gone; returns the repair."""
    client: Any = application.wired.clickhouse
    original = client._run

    async def down(fn: object) -> object:
        raise ConnectionRefusedError("injected: ClickHouse is unreachable")

    client._run = down

    def repair() -> None:
        client._run = original

    return repair


async def test_clickhouse_down_near_term_goes_on_long_term_gets_503(
    app: Application, broker: EmbeddedTansu, unique: str
) -> None:
    base = f"http://127.0.0.1:{app.settings.api_port}"
    topic = f"degraded-{unique}"
    reader = TopicReader(broker.bootstrap_servers, topic)
    repair = _outage(app)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            soon = await http.post(API, json={"topic": topic, "body": "soon", "delay_seconds": 0.5})
            assert soon.status_code == 201, soon.text
            later = {"topic": topic, "body": "later", "delay_seconds": 30 * 86400}
            refused = [await http.post(API, json=later) for _ in range(6)]
            assert {r.status_code for r in refused} == {503}
            assert all(r.headers.get("Retry-After") for r in refused)
            assert "clickhouse" in refused[0].json()["error"]
            health = await http.get(f"{API}/monitoring/health")
            assert health.status_code == 200  # still serving the near term
            report = health.json()
            assert report["status"] == "degraded"
            assert report["dependencies"]["clickhouse"]["status"] == "down"
            assert report["breakers"]["clickhouse"] == "open"
            msgs = await asyncio.to_thread(reader.read, 1, 10)
            assert [m.value for m in msgs] == [b"soon"]
            metrics = (await http.get(f"{API}/monitoring/metrics")).text
            assert 'delayline_circuit_breaker_state{dependency="clickhouse"} 2.0' in metrics

            repair()
            accepted = None
            for _ in range(100):  # the breaker half-opens after its timeout, then closes
                accepted = await http.post(API, json=later)
                if accepted.status_code == 201:
                    break
                await asyncio.sleep(0.1)
            assert accepted is not None
            assert accepted.status_code == 201, accepted.text
            event = await app.service.get_event(accepted.json()["schedule_id"])
            assert event is not None
            assert event.scheduled_at > utc_now() + timedelta(days=29)
    finally:
        with contextlib.suppress(Exception):
            repair()
        reader.close()

"""Encryption at rest through the served application (real Valkey, chDB, Tansu, HTTP).

With a key ring set, events scheduled over HTTP fire with their exact body and headers while
Valkey's payload hash and the ClickHouse rows, read raw, hold neither; a rotation re-seals
every stored payload to the new key (the old one can then go); a removed key parks the event
with a reason naming the key, shown by GET and health, and a restored key brings it back.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from delayline.adapters.clickhouse.client import ClickHouseClient
from delayline.adapters.embedded import EmbeddedTansu, EmbeddedValkey, free_port
from delayline.adapters.encryption import SEALED_HEADERS, sealed_key_id
from delayline.bootstrap import Application
from delayline.domain.codec import sealed_part
from delayline.settings import load_settings
from tests.support import Fired, TopicReader

API = "/api/v1/schedules"
HORIZON = 20
"""Events due later than this go to ClickHouse (the sync runs on demand)."""
SECRET_BODY = b'{"card": "4111-1111-1111-1111"}\x00\xff'
SECRET_HEADER = "patient-record-7781"
KEYS = {name: os.urandom(32) for name in ("k1", "k2", "t-acme")}

StartApp = Callable[..., Awaitable[Application]]


def ring(current: str, *names: str) -> str:
    keys = {n: base64.b64encode(KEYS[n]).decode() for n in names}
    return orjson.dumps({"current": current, "keys": keys}).decode()


@pytest.fixture
async def start_app(
    valkey: EmbeddedValkey,
    broker: EmbeddedTansu,
    clickhouse_dsn: str,
    clickhouse_root: ClickHouseClient,
    unique: str,
    tmp_path: Path,
) -> AsyncIterator[StartApp]:
    """Starts the application on this test's prefix and database with the given key ring;
    one at a time (the test stops one before starting the next, as an operator would)."""
    apps: list[Application] = []
    port = free_port()

    async def start(keys: str, tenants: dict[str, str] | None = None) -> Application:
        settings = load_settings(
            redis_url=valkey.url,
            redis_key_prefix=f"enc-{unique}",
            kafka_bootstrap_servers=broker.bootstrap_servers,
            kafka_delayed_topic_name=f"enc-delayed-{unique}",
            kafka_dead_letter_topic_name=f"enc-delayed-{unique}.dlq",
            kafka_consumer_group=f"enc-{unique}",
            clickhouse_dsn=clickhouse_dsn,
            clickhouse_database=f"enc_{unique}",
            data_dir=tmp_path,
            api_port=port,
            immediate_horizon_seconds=HORIZON,
            transfer_horizon_seconds=HORIZON,
            clickhouse_sync_interval=1,
            redis_processing_interval=1,
            encryption_keys=keys,
            encryption_tenant_keys=tenants or {},
        )
        app = Application(settings, roles={"schedule", "fire", "api", "ingest"})
        await app.start()
        apps.append(app)
        return app

    yield start
    for app in apps:
        await app.stop()
    await clickhouse_root.command(f"DROP DATABASE IF EXISTS enc_{unique} SYNC")


def http(app: Application) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.settings.api_port}", timeout=30)


async def post(client: httpx.AsyncClient, sid: str, topic: str, delay: float, **extra: Any) -> None:
    response = await client.post(
        API,
        json={
            "topic": topic,
            "schedule_id": sid,
            "delay_seconds": delay,
            "body": base64.b64encode(SECRET_BODY).decode(),
            "body_encoding": "base64",
            "headers": {"x-record": SECRET_HEADER},
            **extra,
        },
    )
    assert response.status_code == 201, response.text


async def raw_redis(redis_client: Redis, unique: str, key: str = "payload") -> dict[str, bytes]:
    values: dict[bytes, bytes] = await redis_client.hgetall(f"{{enc-{unique}}}:{key}")  # type: ignore[assignment]
    return {k.decode(): v for k, v in values.items()}


async def raw_clickhouse(root: ClickHouseClient, unique: str) -> list[tuple[str, bytes, str]]:
    """Every stored version (not just the newest): none may hold the payload in clear."""
    rows = await root.query(
        f"SELECT schedule_id, body, headers FROM enc_{unique}.event_schedules",
        column_formats={"body": "bytes"},
    )
    return [(str(r[0]), bytes(r[1]), str(r[2])) for r in rows]


def redis_key_id(value: bytes) -> str:
    _, sealed = sealed_part(value[value.index(b"{") :])
    assert sealed is not None, value
    return sealed_key_id(sealed)


def assert_no_plaintext(blob: bytes) -> None:
    assert SECRET_BODY not in blob and b"4111-1111" not in blob
    assert SECRET_HEADER.encode() not in blob


def by_id(fired: list[Fired]) -> dict[str, Fired]:
    return {m.header("x-schedule-id"): m for m in fired}


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def sync_until_moved(client: httpx.AsyncClient, count: int, timeout: float = 40) -> None:
    moved = 0
    deadline = time.monotonic() + timeout
    while moved < count:
        assert time.monotonic() < deadline, f"the sync moved {moved} of {count}"
        result = await client.post(f"{API}/monitoring/sync")
        assert result.status_code == 200, result.text
        moved += result.json()["moved"]
        await asyncio.sleep(0.2)


async def test_sealed_at_rest_in_both_tiers_and_fired_exactly(
    start_app: StartApp,
    broker: EmbeddedTansu,
    redis_client: Redis,
    clickhouse_root: ClickHouseClient,
    unique: str,
) -> None:
    target = f"enc-fired-{unique}"
    reader = TopicReader(broker.bootstrap_servers, target)
    app = await start_app(ring("k1", "k1", "t-acme"), {"acme": "t-acme"})
    try:
        async with http(app) as client:
            await post(client, "near", target, 4)
            await post(client, "far", target, HORIZON + 4, entity_type="acme")
            payloads = await raw_redis(redis_client, unique)
            assert set(payloads) == {"near"}
            assert_no_plaintext(payloads["near"])
            assert redis_key_id(payloads["near"]) == "k1"
            rows = await raw_clickhouse(clickhouse_root, unique)
            assert [(sid, headers) for sid, _, headers in rows] == [("far", SEALED_HEADERS)]
            assert_no_plaintext(rows[0][1])
            assert sealed_key_id(rows[0][1]) == "t-acme"  # the tenant's own key
            for sid in ("near", "far"):  # an authorised GET opens them
                shown = (await client.get(f"{API}/{sid}")).json()
                assert base64.b64decode(shown["body"]) == SECRET_BODY
                assert shown["headers"] == {"x-record": SECRET_HEADER}
            await sync_until_moved(client, 1)
            for _sid, value in (await raw_redis(redis_client, unique)).items():
                assert_no_plaintext(value)
            fired = by_id(await asyncio.to_thread(reader.read, 2, 60))
            assert set(fired) == {"near", "far"}
            for message in fired.values():
                assert message.value == SECRET_BODY
                assert message.header("x-record") == SECRET_HEADER
            for _sid, body, _headers in await raw_clickhouse(clickhouse_root, unique):
                assert_no_plaintext(body)
            # The lifecycle history keeps snapshots of the event: sealed too.
            history: list[Any] = []
            for _ in range(100):  # the history is written in batches, off the firing path
                history = list(
                    await clickhouse_root.query(
                        f"SELECT body, headers FROM enc_{unique}.event_lifecycle "
                        "WHERE has_snapshot = 1",
                        column_formats={"body": "bytes"},
                    )
                )
                if len(history) >= 4:
                    break
                await asyncio.sleep(0.1)
            assert history
            for body, headers in history:
                assert headers == SEALED_HEADERS
                assert_no_plaintext(bytes(body))
            shown = (await client.get(f"{API}/near")).json()  # the record after firing
            assert base64.b64decode(shown["body"]) == SECRET_BODY
    finally:
        reader.close()


async def test_rotation_reseals_every_payload_and_the_old_key_can_go(
    start_app: StartApp,
    broker: EmbeddedTansu,
    redis_client: Redis,
    clickhouse_root: ClickHouseClient,
    unique: str,
) -> None:
    target = f"enc-rot-{unique}"
    reader = TopicReader(broker.bootstrap_servers, target)
    try:
        first = await start_app(ring("k1", "k1"))
        async with http(first) as client:
            await post(client, "near", target, 12)
            await post(client, "far", target, HORIZON + 6)
        await first.stop()
        second = await start_app(ring("k2", "k1", "k2"))
        async with http(second) as client:
            started = await client.post(f"{API}/monitoring/rotate-keys")
            assert started.status_code == 202, started.text
            assert started.json()["key_id"] == "k2"
            status: dict[str, Any] = {}
            for _ in range(300):
                status = (await client.get(f"{API}/monitoring/rotate-keys")).json()
                if status["state"] != "running":
                    break
                await asyncio.sleep(0.1)
            assert status["state"] == "done", status
            assert status["tiers"]["redis"]["rekeyed"] == 1
            assert status["tiers"]["clickhouse"]["rekeyed"] == 1
        payloads = await raw_redis(redis_client, unique)
        assert {sid: redis_key_id(v) for sid, v in payloads.items()} == {"near": "k2"}
        newest = (await raw_clickhouse(clickhouse_root, unique))[-1]
        assert newest[0] == "far"
        assert {sealed_key_id(b) for _, b, _ in await raw_clickhouse(clickhouse_root, unique)} >= {
            "k2"
        }
        await second.stop()
        third = await start_app(ring("k2", "k2"))  # k1 retired
        async with http(third) as client:
            await sync_until_moved(client, 1)
        fired = by_id(await asyncio.to_thread(reader.read, 2, 60))
        assert set(fired) == {"near", "far"}
        assert {m.value for m in fired.values()} == {SECRET_BODY}
        assert third.cipher is not None
        assert third.cipher.unreadable.snapshot()["found"] == {}
    finally:
        reader.close()


async def test_a_removed_key_parks_the_event_with_its_reason_until_restored(
    start_app: StartApp,
    broker: EmbeddedTansu,
    redis_client: Redis,
    clickhouse_root: ClickHouseClient,
    unique: str,
) -> None:
    target = f"enc-shred-{unique}"
    reader = TopicReader(broker.bootstrap_servers, target)
    try:
        first = await start_app(ring("k1", "k1", "t-acme"), {"acme": "t-acme"})
        async with http(first) as client:
            await post(client, "acme-near", target, 5, entity_type="acme")
            await post(client, "acme-far", target, HORIZON + 3, entity_type="acme")
            await post(client, "acme-later", target, 3600, entity_type="acme")
            await post(client, "globex", target, 5, entity_type="globex")
        await first.stop()
        # The tenant's key is deleted: its events are unreadable, the others fire.
        second = await start_app(ring("k1", "k1"))
        async with http(second) as client:
            fired = by_id(await asyncio.to_thread(reader.read, 1, 60))
            assert set(fired) == {"globex"}

            async def parked() -> bool:
                return "acme-near" in await raw_redis(redis_client, unique, "parked")

            await wait_for(parked)
            shown = (await client.get(f"{API}/acme-near")).json()
            assert shown["status"] == "failed"
            assert shown["last_error"] == "parked: undecryptable: key t-acme missing"
            assert shown["body"] == "" and shown["headers"] == {}
            kept = (await raw_redis(redis_client, unique, "parked"))["acme-near"]
            assert kept.startswith(b"undecryptable: key t-acme missing\n")
            assert_no_plaintext(kept)

            # A pending ClickHouse event shows why it has no body; moving it into Redis (which
            # would store it without its payload) is refused with the reason.
            later = (await client.get(f"{API}/acme-later")).json()
            assert later["status"] == "pending"
            assert later["last_error"] == "undecryptable: key t-acme missing"
            soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
            moved_in = await client.put(f"{API}/acme-later", json={"scheduled_at": soon})
            assert moved_in.status_code == 409, moved_in.text
            assert moved_in.json()["error"] == "undecryptable: key t-acme missing"

            # The ClickHouse event is marked failed by the sync, not moved.
            await asyncio.sleep(4)
            moved = (await client.post(f"{API}/monitoring/sync")).json()["moved"]
            assert moved == 0
            far = (await client.get(f"{API}/acme-far")).json()
            assert far["status"] == "failed"
            assert far["last_error"] == "undecryptable: key t-acme missing"

            health = (await client.get(f"{API}/monitoring/health")).json()
            assert health["status"] == "degraded" and health["serving"] is True
            problem = health["dependencies"]["encryption"]
            assert problem["status"] == "down"
            assert "1 event(s) parked in Redis" in problem["error"]
            assert "key t-acme missing" in problem["error"]
            metrics = (await client.get(f"{API}/monitoring/metrics")).text
            assert 'delayline_undecryptable_events_total{key_id="t-acme",tier="redis"} 1.0' in (
                metrics
            )
            # Nothing loops: parked once, never claimed again, nothing else fired.
            await asyncio.sleep(1.5)
            assert await second.wired.near.parked() == 1
            assert second.cipher is not None
            assert second.cipher.unreadable.snapshot()["found"]["redis"] == {"t-acme": 1}
            assert len(await asyncio.to_thread(reader.read_for, 0.5)) == 1
        await second.stop()
        # The key comes back: a rotation puts both events back, and they fire.
        third = await start_app(ring("k1", "k1", "t-acme"), {"acme": "t-acme"})
        async with http(third) as client:
            cli = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "delayline",
                "rotate-keys",
                "--api-url",
                str(client.base_url),
                "--interval",
                "0.2",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if not k.startswith("SCHEDULES_")},
            )
            output = (await cli.communicate())[0].decode()
            assert cli.returncode == 0, output
            assert "rotating to key k1" in output
            assert "redis: scanned 1, re-sealed 0, restored 1, unreadable 0 (done)" in output
            assert (
                "clickhouse: scanned" in output and "restored 1" in output.split("clickhouse")[-1]
            )
            assert output.strip().endswith("key rotation done")
            status = (await client.get(f"{API}/monitoring/rotate-keys")).json()
            assert status["state"] == "done", status
            assert status["tiers"]["redis"]["restored"] == 1
            assert status["tiers"]["clickhouse"]["restored"] == 1
            await sync_until_moved(client, 1)
        fired = by_id(await asyncio.to_thread(reader.read, 3, 60))
        assert set(fired) == {"globex", "acme-near", "acme-far"}
        assert {m.value for m in fired.values()} == {SECRET_BODY}
        assert await raw_redis(redis_client, unique, "parked") == {}
    finally:
        reader.close()


async def test_rotate_keys_is_404_with_encryption_off(
    valkey: EmbeddedValkey,
    broker: EmbeddedTansu,
    clickhouse_dsn: str,
    clickhouse_root: ClickHouseClient,
    unique: str,
    tmp_path: Path,
) -> None:
    settings = load_settings(
        redis_url=valkey.url,
        redis_key_prefix=f"off-{unique}",
        kafka_bootstrap_servers=broker.bootstrap_servers,
        kafka_delayed_topic_name=f"off-delayed-{unique}",
        kafka_consumer_group=f"off-{unique}",
        clickhouse_dsn=clickhouse_dsn,
        clickhouse_database=f"off_{unique}",
        data_dir=tmp_path,
        api_port=free_port(),
    )
    roles = {"schedule", "fire", "api", "ingest"}
    async with Application(settings, roles=roles) as app, http(app) as c:
        response = await c.post(f"{API}/monitoring/rotate-keys")
        assert response.status_code == 404
        assert "SCHEDULES_ENCRYPTION_KEYS" in response.json()["error"]
        health = (await c.get(f"{API}/monitoring/health")).json()
        assert "encryption" not in health["dependencies"]
    await clickhouse_root.command(f"DROP DATABASE IF EXISTS off_{unique} SYNC")

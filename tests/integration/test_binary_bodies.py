"""Binary bodies through the whole application (real Valkey, chDB, Tansu, HTTP): Kafka in
(native and etf1 headers), HTTP with base64 and the Python API with bytes, through Redis or
through ClickHouse and the sync, to Kafka out byte for byte; the analytics record them."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Producer

from delayline.adapters.clickhouse.client import ClickHouseClient
from delayline.adapters.embedded import EmbeddedTansu, EmbeddedValkey, free_port
from delayline.bootstrap import Application
from delayline.domain.events import EventStatus
from delayline.settings import load_settings
from tests.support import Fired, TopicReader

API = "/api/v1/schedules"
BINARY = b"\x00\x02\xff\xfe\x80\xc3\x28\xed\xa0\x80\xf8\x88\x80\x80\x80\n\r\x00\xff"
"""NUL, bytes never valid in UTF-8, a bad continuation, an encoded surrogate, a 5-byte form,
a newline (the Redis codec's separator) and a trailing 0xff."""
HORIZON = 2
Headers = list[tuple[str, str | bytes | None]]
"""Immediate (and transfer) horizon: events due later than this go to ClickHouse."""


def _value(name: str) -> bytes:
    return BINARY + name.encode() + BINARY


@pytest.fixture
async def app(
    valkey: EmbeddedValkey,
    broker: EmbeddedTansu,
    clickhouse_dsn: str,
    clickhouse_root: ClickHouseClient,  # the session's engine stays open: the app shares it
    unique: str,
    tmp_path: Path,
) -> AsyncIterator[Application]:
    settings = load_settings(
        redis_url=valkey.url,
        redis_key_prefix=f"bin-{unique}",
        kafka_bootstrap_servers=broker.bootstrap_servers,
        kafka_delayed_topic_name=f"bin-delayed-{unique}",
        kafka_dead_letter_topic_name=f"bin-delayed-{unique}.dlq",
        kafka_consumer_group=f"bin-{unique}",
        clickhouse_dsn=clickhouse_dsn,
        clickhouse_database=f"bin_{unique}",
        data_dir=tmp_path,
        api_port=free_port(),
        immediate_horizon_seconds=HORIZON,
        transfer_horizon_seconds=HORIZON,
        clickhouse_sync_interval=1,
        redis_processing_interval=1,
        analytics_flush_interval=0.2,
    )
    # The sync runs on demand (POST /monitoring/sync), so the test sees the ClickHouse tier.
    application = Application(settings, roles={"schedule", "fire", "api", "ingest"})
    await application.start()
    yield application
    await application.stop()
    await clickhouse_root.command(f"DROP DATABASE IF EXISTS bin_{unique} SYNC")


def _produce(bootstrap: str, topic: str, *messages: tuple[bytes, bytes, Headers]) -> None:
    """Produce raw ``(key, value, headers)`` messages: bytes as they are, nothing sanitised."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    for key, value, headers in messages:
        producer.produce(topic, value=value, key=key, headers=headers)
    assert producer.flush(20) == 0


async def _dead_letters(broker: EmbeddedTansu, topic: str) -> list[str]:
    """The reasons of what was dead-lettered (to explain a missing message)."""
    reader = TopicReader(broker.bootstrap_servers, topic, create=False)
    try:
        return [m.header("x-dlq-reason") for m in await asyncio.to_thread(reader.read_for, 1)]
    finally:
        reader.close()


def _by_id(fired: list[Fired]) -> dict[str, Fired]:
    return {m.header("x-schedule-id"): m for m in fired}


async def test_binary_bodies_fire_byte_for_byte_through_both_tiers(
    app: Application, broker: EmbeddedTansu, unique: str
) -> None:
    s = app.settings
    target = f"bin-fired-{unique}"
    reader = TopicReader(broker.bootstrap_servers, target)
    base = f"http://127.0.0.1:{s.api_port}"
    t = target.encode()
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            # 1. Due at once (Redis): Kafka in (native, etf1), then HTTP base64 and Python bytes.
            soon_epoch = f"{time.time() + 0.3:.3f}".encode()
            _produce(
                broker.bootstrap_servers,
                s.kafka_delayed_topic_name,
                (
                    b"k-native",
                    _value("native-soon"),
                    [("x-topic", t), ("x-delay-seconds", b"0.3"), ("x-schedule-id", b"n-soon")],
                ),
                (
                    b"e-soon",
                    _value("etf1-soon"),
                    [
                        ("scheduler-epoch", soon_epoch),
                        ("scheduler-target-topic", t),
                        ("scheduler-target-key", b"tk-soon"),
                    ],
                ),
            )
            fired = _by_id(await asyncio.to_thread(reader.read, 2, 60))
            assert {sid: m.value for sid, m in fired.items()} == {
                "n-soon": _value("native-soon"),
                "e-soon": _value("etf1-soon"),
            }, await _dead_letters(broker, s.kafka_dead_letter_topic_name)
            posted = await http.post(
                API,
                json={
                    "topic": target,
                    "body": base64.b64encode(_value("http-soon")).decode(),
                    "body_encoding": "base64",
                    "delay_seconds": 0.3,
                    "schedule_id": "h-soon",
                },
            )
            assert posted.status_code == 201, posted.text
            await app.service.schedule_event(
                topic=target, body=_value("python-soon"), delay_seconds=0.3, schedule_id="p-soon"
            )
            fired = _by_id(await asyncio.to_thread(reader.read, 4, 60))
            assert {sid: m.value for sid, m in fired.items()} == {
                "n-soon": _value("native-soon"),
                "e-soon": _value("etf1-soon"),
                "h-soon": _value("http-soon"),
                "p-soon": _value("python-soon"),
            }
            assert (fired["n-soon"].key, fired["e-soon"].key) == (b"k-native", b"tk-soon")

            # 2. Due after the horizon: Kafka in → ClickHouse → the sync → Redis → Kafka out.
            # (The consumer is running now: it stores these well within the horizon.)
            far_epoch = f"{time.time() + 3 * HORIZON:.3f}".encode()
            _produce(
                broker.bootstrap_servers,
                s.kafka_delayed_topic_name,
                (
                    b"k-native-far",
                    _value("native-far"),
                    [
                        ("x-topic", t),
                        ("x-delay-seconds", str(3 * HORIZON).encode()),
                        ("x-schedule-id", b"n-far"),
                    ],
                ),
                (
                    b"e-far",
                    _value("etf1-far"),
                    [("scheduler-epoch", far_epoch), ("scheduler-target-topic", t)],
                ),
            )
            assert app.wired.far is not None
            for sid, name in (("n-far", "native-far"), ("e-far", "etf1-far")):
                stored = None
                for _ in range(200):
                    stored = await app.wired.far.get(sid)
                    if stored is not None:
                        break
                    await asyncio.sleep(0.05)
                assert stored is not None, f"{sid} is not in ClickHouse"
                assert (stored.status, stored.body) == (EventStatus.PENDING, _value(name))
                shown = (await http.get(f"{API}/{sid}")).json()
                assert (shown["status"], shown["body_encoding"]) == ("pending", "base64")
                assert base64.b64decode(shown["body"]) == _value(name)
            moved = 0
            while moved < 2:  # the sync moves them once they are due within the horizon
                result = await http.post(f"{API}/monitoring/sync")
                assert result.status_code == 200, result.text
                moved += result.json()["moved"]
                await asyncio.sleep(0.2)
            for sid in ("n-far", "e-far"):
                queued = await app.wired.far.get(sid)
                assert queued is not None and queued.status is EventStatus.QUEUED
            fired = _by_id(await asyncio.to_thread(reader.read, 6, 60))
            assert fired["n-far"].value == _value("native-far")
            assert fired["e-far"].value == _value("etf1-far")
            assert fired["n-far"].key == b"k-native-far"

            # 3. Due much later (ClickHouse): HTTP base64 and Python bytes read back exactly.
            posted = await http.post(
                API,
                json={
                    "topic": target,
                    "body": base64.b64encode(_value("http-later")).decode(),
                    "body_encoding": "base64",
                    "delay_seconds": 3600,
                    "schedule_id": "h-later",
                },
            )
            assert posted.status_code == 201, posted.text
            shown = (await http.get(f"{API}/h-later")).json()
            assert shown["body_encoding"] == "base64"
            assert base64.b64decode(shown["body"]) == _value("http-later")
            later = await app.service.schedule_event(
                topic=target,
                body=_value("python-later"),
                scheduled_at=datetime.now(UTC) + timedelta(hours=1),
            )
            got = await app.service.get_event(later)
            assert got is not None and got.body == _value("python-later")
            text = await http.post(
                API, json={"topic": target, "body": "plain", "delay_seconds": 60}
            )
            shown = (await http.get(f"{API}/{text.json()['schedule_id']}")).json()
            assert (shown["body"], shown["body_encoding"]) == ("plain", "utf-8")

            # 4. Every firing was recorded by the analytics.
            assert app.wired.analytics is not None
            summary: dict[str, object] = {}
            for _ in range(100):
                summary = await app.wired.analytics.get_summary(
                    datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1)
                )
                if summary.get("total_executions") == 6:
                    break
                await asyncio.sleep(0.1)
            assert summary.get("total_executions") == 6, summary
            assert summary.get("successful_executions") == 6, summary
    finally:
        reader.close()

"""The consumer's counters and stalls, seen over HTTP on the served application (real Valkey,
Tansu and chDB): every counter docs/INGRESS.md promises is on the metrics endpoint, and a
consumer stuck on a batch shows in health and metrics until it gets past it."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from delayline.adapters.embedded import EmbeddedTansu, EmbeddedValkey, free_port
from delayline.bootstrap import Application
from delayline.settings import load_settings
from tests.integration.kafka.conftest import until

MON = "/api/v1/schedules/monitoring"
DOCS = Path(__file__).resolve().parents[3] / "docs" / "INGRESS.md"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Served:
    app: Application
    valkey: EmbeddedValkey
    http: httpx.AsyncClient
    topic: str

    def produce(
        self, *messages: tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]
    ) -> None:
        servers = self.app.running.endpoints.bootstrap_servers
        producer = Producer({"bootstrap.servers": servers, "linger.ms": 0})
        for key, value, headers in messages:
            producer.produce(self.topic, value=value, key=key, headers=list(headers), partition=0)
        assert producer.flush(20) == 0

    async def samples(self) -> Samples:
        resp = await self.http.get(f"{MON}/metrics")
        assert resp.status_code == 200
        out: Samples = {}
        for family in text_string_to_metric_families(resp.text):
            for sample in family.samples:
                out[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return out

    async def health(self) -> dict[str, Any]:
        resp = await self.http.get(f"{MON}/health")
        report: dict[str, Any] = resp.json()
        return report


@pytest.fixture
async def served(
    broker: EmbeddedTansu,
    clickhouse_dsn: str,
    clickhouse_root: object,  # the session's engine stays open: this app shares its folder
    unique: str,
    tmp_path: Path,
) -> AsyncIterator[Served]:
    valkey = EmbeddedValkey(tmp_path / "valkey")  # this test's own: it is stopped and restarted
    valkey.start()
    settings = load_settings(
        redis_url=valkey.url,
        redis_key_prefix=f"srv-{unique}",
        kafka_bootstrap_servers=broker.bootstrap_servers,
        kafka_delayed_topic_name=f"delayed-{unique}",
        kafka_dead_letter_topic_name=f"delayed-{unique}.dlq",
        kafka_consumer_group=f"g-{unique}",
        clickhouse_dsn=clickhouse_dsn,
        clickhouse_database=f"srv_{unique}",
        data_dir=tmp_path / "data",
        api_port=free_port(),
    )
    app = Application(settings, roles={"schedule", "api", "ingest"})
    await app.start()
    base = f"http://127.0.0.1:{settings.api_port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        yield Served(app, valkey, http, settings.kafka_delayed_topic_name)
    await app.stop()
    valkey.stop()


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), -1.0)


def _promised_metrics() -> set[str]:
    """The metric names docs/INGRESS.md gives for the consumer's counters."""
    return set(re.findall(r"`(delayline_[a-z_]+)`", DOCS.read_text()))


async def test_every_promised_consumer_counter_is_on_the_metrics_endpoint(served: Served) -> None:
    good = [("x-topic", b"t"), ("x-delay-seconds", b"600"), ("x-schedule-id", b"s-1")]
    served.produce(
        (b"k", b"v", good),
        (b"k", b"v", good),  # the same schedule id again: ignored as a duplicate
        (b"unknown-id", None, []),  # a cancel for no event: ignored
        (b"k", b"v", [("x-delay-seconds", b"1")]),  # no x-topic: dead-lettered
    )

    outcomes = ("scheduled", "duplicates", "cancel_missed", "dead_lettered")

    async def all_processed() -> bool:
        samples = await served.samples()
        return sum(_value(samples, f"delayline_ingress_{n}_total") for n in outcomes) == 4

    await until(all_processed)
    samples = await served.samples()
    names = {name for name, _ in samples}
    promised = _promised_metrics()
    assert len(promised) >= 12, promised
    assert promised <= names, promised - names
    expected = {
        "delayline_ingress_consumed_total": 4,
        "delayline_ingress_scheduled_total": 1,
        "delayline_ingress_duplicates_total": 1,
        "delayline_ingress_cancelled_total": 0,
        "delayline_ingress_cancel_missed_total": 1,
        "delayline_ingress_dead_lettered_total": 1,
        "delayline_ingress_dead_letter_refused_total": 0,
        "delayline_ingress_paused": 0,
        "delayline_ingress_stalled_seconds": 0,
    }
    assert {name: _value(samples, name) for name in expected} == expected
    assert _value(samples, "delayline_ingress_batches_total") >= 1
    assert _value(samples, "delayline_ingress_ignored_messages_total", reason="duplicate") == 1
    assert _value(samples, "delayline_ingress_ignored_messages_total", reason="cancel_missed") == 1
    assert _value(samples, "delayline_dead_lettered_messages_total", reason="missing_header") == 1
    assert (await served.health())["dependencies"]["ingress"]["status"] == "up"


async def test_a_stalled_consumer_shows_in_health_and_metrics(served: Served) -> None:
    served.valkey.stop()
    try:
        served.produce((b"k", b"v", [("x-topic", b"t"), ("x-delay-seconds", b"600")]))

        async def stalled() -> bool:
            ingress = (await served.health())["dependencies"]["ingress"]
            return ingress["status"] == "down" and "waited" in ingress.get("error", "")

        await until(stalled)
        samples = await served.samples()
        assert _value(samples, "delayline_ingress_stalled_seconds") > 0
        assert _value(samples, "delayline_ingress_retries_total") >= 1
        assert _value(samples, "delayline_ingress_scheduled_total") == 0
    finally:
        served.valkey.start()

    async def recovered() -> bool:
        samples = await served.samples()
        return _value(samples, "delayline_ingress_scheduled_total") == 1

    await until(recovered, timeout=60)

    async def healthy() -> bool:
        return bool((await served.health())["dependencies"]["ingress"]["status"] == "up")

    await until(healthy)
    assert _value(await served.samples(), "delayline_ingress_stalled_seconds") == 0

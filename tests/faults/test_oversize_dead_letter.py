"""A rejected message whose dead letter would not fit the broker must still be dead-lettered
(cut to fit, its original sizes noted) and must not block its partition: a refused dead letter
is not an unavailable store, and the consumer never retries it forever."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Producer

from delayline.adapters.embedded import EmbeddedTansu, EmbeddedValkey
from tests.faults.conftest import service_env
from tests.faults.corpus import KafkaCase, oversize_kafka_case
from tests.faults.harness import ServiceProcess, TopicCollector
from tests.support import create_topics

pytestmark = pytest.mark.faults
DLQ = "delayed_events.dlq"


def _key_and_value_filling_the_limit(topic: str) -> KafkaCase:
    """Key 99,900 B + value 900,000 B and no x-topic: rejected, and with its notes too big for
    librdkafka's default 1,000,000-byte message.max.bytes unless cut."""
    return KafkaCase(
        "key and value filling the limit",
        b"v" * 900_000,
        [("x-delay-seconds", b"1"), ("fault-case", b"key and value filling the limit")],
        key=b"k" * 99_900,
    )


def _dead_letter_then_fire(
    tmp_path: Path,
    run_id: str,
    make_valkey: Callable[[str], EmbeddedValkey],
    broker: EmbeddedTansu,
    make_service: Callable[[dict[str, str]], ServiceProcess],
    make_case: Callable[[str], KafkaCase],
) -> tuple[ServiceProcess, dict[str, bytes]]:
    """Produce ``case`` then a good message to partition 0; the good one must fire. Returns
    the service and the headers of the one dead letter."""
    topic = f"fired-{run_id}"
    case = make_case(topic)
    create_topics(broker.bootstrap_servers, topic, partitions=4)
    service = make_service(service_env(tmp_path, make_valkey("everysec"), broker, run_id))
    service.start()
    collector = TopicCollector(broker.bootstrap_servers, {topic: 4, DLQ: 4})
    collector.start()
    try:
        producer = Producer(
            {"bootstrap.servers": broker.bootstrap_servers, "message.max.bytes": 4 << 20}
        )
        producer.produce(
            "delayed_events", case.value, key=case.key, headers=case.headers, partition=0
        )
        assert producer.flush(30) == 0
        time.sleep(3)  # the consumer took the bad one alone: the next is a later batch
        sid = f"{run_id}-after"
        producer.produce(
            "delayed_events",
            b"{}",
            partition=0,
            headers=[
                ("x-topic", topic.encode()),
                ("x-delay-seconds", b"0"),
                ("x-schedule-id", sid.encode()),
            ],
        )
        assert producer.flush(30) == 0
        missing = collector.wait_for({sid}, timeout=20)
        deadline = time.monotonic() + 5
        while not collector.raw_of(DLQ) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        collector.stop()
    assert service.alive, service.log_tail()
    assert not missing, f"the event after the bad message never fired\n{service.log_tail()}"
    dead = collector.raw_of(DLQ)
    assert [h.get("fault-case") for _, _, h in dead] == [case.name.encode()]
    [(_, _, dead_headers)] = dead
    return service, dead_headers


def test_oversize_message_is_dead_lettered_and_does_not_block_its_partition(
    tmp_path: Path,
    run_id: str,
    make_valkey: Callable[[str], EmbeddedValkey],
    own_broker: EmbeddedTansu,
    make_service: Callable[[dict[str, str]], ServiceProcess],
) -> None:
    _, headers = _dead_letter_then_fire(
        tmp_path, run_id, make_valkey, own_broker, make_service, oversize_kafka_case
    )
    assert headers["x-dlq-reason"].startswith(b"invalid_event")
    assert b"value=1048586" in headers["x-dlq-original-sizes"]


def test_key_and_value_filling_the_limit_are_cut_and_never_stall_ingress(
    tmp_path: Path,
    run_id: str,
    make_valkey: Callable[[str], EmbeddedValkey],
    own_broker: EmbeddedTansu,
    make_service: Callable[[dict[str, str]], ServiceProcess],
) -> None:
    service, headers = _dead_letter_then_fire(
        tmp_path, run_id, make_valkey, own_broker, make_service, _key_and_value_filling_the_limit
    )
    assert headers["x-dlq-reason"].startswith(b"missing_header: x-topic")
    sizes = dict(p.split(b"=") for p in headers["x-dlq-original-sizes"].split(b";"))
    assert (sizes[b"key"], sizes[b"value"]) == (b"99900", b"900000")
    mon = f"{service.base_url}/api/v1/schedules/monitoring"
    health = httpx.get(f"{mon}/health", timeout=5).json()
    assert health["dependencies"]["ingress"]["status"] == "up", health
    metrics = httpx.get(f"{mon}/metrics", timeout=5).text
    assert "delayline_ingress_dead_lettered_total 1.0" in metrics
    assert "delayline_ingress_stalled_seconds 0.0" in metrics

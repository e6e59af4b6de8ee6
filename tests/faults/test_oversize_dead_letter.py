"""PENDING (fails until fixed; rename to test_oversize_dead_letter.py): a delayed-topic message
over 1 MB, which a Kafka broker accepts by default, must be dead-lettered, not block its
partition. Today the dead-letter produce fails with MSG_SIZE_TOO_LARGE, the consumer reads that
as "store unavailable" and retries the batch forever: every later message of the partition waits.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Producer

from delayline.adapters.embedded import EmbeddedTansu, EmbeddedValkey
from tests.faults.conftest import service_env
from tests.faults.corpus import oversize_kafka_case
from tests.faults.harness import ServiceProcess, TopicCollector
from tests.support import create_topics

pytestmark = pytest.mark.faults


def test_oversize_message_is_dead_lettered_and_does_not_block_its_partition(
    tmp_path: Path,
    run_id: str,
    make_valkey: Callable[[str], EmbeddedValkey],
    own_broker: EmbeddedTansu,
    make_service: Callable[[dict[str, str]], ServiceProcess],
) -> None:
    topic = f"fired-{run_id}"
    create_topics(own_broker.bootstrap_servers, topic, partitions=4)
    service = make_service(service_env(tmp_path, make_valkey("everysec"), own_broker, run_id))
    service.start()
    collector = TopicCollector(own_broker.bootstrap_servers, {topic: 4, "delayed_events.dlq": 4})
    collector.start()
    try:
        producer = Producer(
            {"bootstrap.servers": own_broker.bootstrap_servers, "message.max.bytes": 4 << 20}
        )
        case = oversize_kafka_case(topic)
        # Same partition for both: the good one comes after the oversize one.
        producer.produce("delayed_events", case.value, headers=case.headers, partition=0)
        assert producer.flush(30) == 0
        time.sleep(3)  # the consumer took the oversize one alone: the next is a later batch
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
        while not collector.raw_of("delayed_events.dlq") and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        collector.stop()
    assert service.alive, service.log_tail()
    assert not missing, f"the event after the oversize message never fired\n{service.log_tail()}"
    dead = collector.raw_of("delayed_events.dlq")
    assert [h.get("fault-case") for _, _, h in dead] == [b"body over 1 MB"]
    assert all(h.get("x-dlq-reason") for _, _, h in dead)

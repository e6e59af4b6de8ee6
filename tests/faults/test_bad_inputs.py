"""Scenario 4: a corpus of bad inputs over HTTP and over the Kafka delayed topic, under load."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Producer

from delayline.adapters.embedded import EmbeddedTansu, EmbeddedValkey
from tests.faults.conftest import Row, service_env
from tests.faults.corpus import SMALL_BODY_LIMIT, http_cases, kafka_cases
from tests.faults.harness import HealthWatcher, HttpLoad, ServiceProcess, TopicCollector, judge
from tests.support import create_topics

pytestmark = pytest.mark.faults

LOAD = 2000
KAFKA_GOOD = 200
DLQ = "delayed_events.dlq"


def send_http_corpus(base_url: str, topic: str) -> dict[str, tuple[int, str, bool]]:
    """Each bad request's status, body (truncated) and whether it is a JSON error."""
    answers: dict[str, tuple[int, str, bool]] = {}
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for case in http_cases(topic):
            response = client.request(
                case.method, case.path, content=case.content, headers=case.headers
            )
            try:
                is_json = "error" in response.json()
            except ValueError:
                is_json = False
            answers[case.name] = (response.status_code, response.text[:300], is_json)
    return answers


def send_kafka_corpus(bootstrap: str, topic: str, run_id: str) -> tuple[int, set[str]]:
    """Interleave the bad messages with good ones; returns (bad count, good schedule ids)."""
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 4 * 1024 * 1024})
    good: set[str] = set()
    bad = kafka_cases(topic)
    for i in range(KAFKA_GOOD):
        sid = f"{run_id}-k{i}"
        good.add(sid)
        producer.produce(
            "delayed_events",
            value=json.dumps({"id": sid}, separators=(",", ":")).encode(),
            key=sid.encode(),
            headers=[
                ("x-topic", topic.encode()),
                ("x-delay-seconds", str(1 + i % 5).encode()),
                ("x-schedule-id", sid.encode()),
            ],
        )
        if i % (KAFKA_GOOD // len(bad) or 1) == 0 and bad:
            case = bad.pop()
            producer.produce("delayed_events", value=case.value, key=case.key, headers=case.headers)
    for case in bad:
        producer.produce("delayed_events", value=case.value, key=case.key, headers=case.headers)
    assert producer.flush(30) == 0
    return len(kafka_cases(topic)), good


def test_bad_inputs_are_refused_and_good_events_around_them_fire(
    tmp_path: Path,
    run_id: str,
    make_valkey: Callable[[str], EmbeddedValkey],
    own_broker: EmbeddedTansu,
    make_service: Callable[[dict[str, str]], ServiceProcess],
    reliability_rows: list[Row],
) -> None:
    valkey = make_valkey("everysec")
    topic = f"fired-{run_id}"
    create_topics(own_broker.bootstrap_servers, topic, partitions=4)
    service = make_service(
        service_env(
            tmp_path, valkey, own_broker, run_id, SCHEDULES_MAX_BODY_BYTES=str(SMALL_BODY_LIMIT)
        )
    )
    service.start()  # creates the delayed and dead-letter topics
    collector = TopicCollector(own_broker.bootstrap_servers, {topic: 4, DLQ: 4})
    collector.start()
    health = HealthWatcher(service.base_url)
    health.start()
    load = HttpLoad(service.base_url, topic, run_id, total=LOAD, send_over=8, due_to=10)
    load.start()
    try:
        answers = send_http_corpus(service.base_url, topic)
        n_kafka, kafka_good = send_kafka_corpus(own_broker.bootstrap_servers, topic, run_id)
        load.join(60)
        missing = collector.wait_for(set(load.accepted) | kafka_good, timeout=40)
        deadline = time.monotonic() + 20
        while len(collector.raw_of(DLQ)) < n_kafka and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
    finally:
        load.stop()
        health.stop()
        collector.stop()
    verdict = judge(load, collector.snapshot())
    dead = collector.raw_of(DLQ)
    dlq_cases = {h.get("fault-case", b"?").decode(errors="replace"): h for _, _, h in dead}
    kafka_names = {c.name for c in kafka_cases(topic)}
    not_dead_lettered = sorted(kafka_names - set(dlq_cases))
    no_reason = sorted(n for n, h in dlq_cases.items() if not h.get("x-dlq-reason"))
    server_errors = {n: a for n, a in answers.items() if a[0] >= 500}
    not_4xx = {n: a for n, a in answers.items() if not 400 <= a[0] < 500}
    not_json = {n: a for n, a in answers.items() if not a[2]}
    reliability_rows.append(
        Row(
            scenario="bad inputs over HTTP and Kafka",
            load=len(load.accepted) + len(kafka_good),
            faults="none (bad inputs only)",
            bad_inputs=len(answers) + n_kafka,
            lost=len(missing),
            duplicates=verdict.duplicates,
            health_s=None,
            firing_s=None,
            note=f"{len(answers)} HTTP: {len(server_errors)} 5xx; {n_kafka} Kafka: "
            f"{n_kafka - len(not_dead_lettered)} dead-lettered",
        )
    )
    assert service.alive, service.log_tail()
    assert service.health_status() == 200, service.log_tail()
    assert not server_errors, server_errors
    assert not not_4xx, not_4xx
    assert not not_json, not_json
    assert not not_dead_lettered, (not_dead_lettered, service.log_tail())
    assert not no_reason, no_reason
    assert len(load.accepted) == LOAD, (load.statuses, load.errors[:5])
    assert not missing, f"{len(missing)} good events never fired: {sorted(missing)[:10]}"
    assert not verdict.mismatched, verdict.mismatched[:5]

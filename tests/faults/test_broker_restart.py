"""Scenario 3: stop the in-memory broker under load, start it again."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from delayline.adapters.embedded import EmbeddedTansu, EmbeddedValkey
from tests.faults.conftest import Row, service_env, start_scenario
from tests.faults.harness import (
    SCHEDULES,
    ServiceProcess,
    describe,
    first_fired_after,
    judge,
)

pytestmark = pytest.mark.faults

LOAD = 3000
DOWN_SECONDS = 6.0


def recreate_topics(bootstrap: str, topics: dict[str, int]) -> None:
    """Create ``topics`` on a fresh broker (an auto-created one may already exist)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(t, n, 1) for t, n in topics.items()])
    for future in futures.values():
        try:
            future.result(10)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


def status_of(base_url: str, schedule_id: str) -> tuple[str, float]:
    """The event's status and ``updated_at`` (epoch seconds) from the HTTP API."""
    body = httpx.get(f"{base_url}{SCHEDULES}/{schedule_id}", timeout=10).json()
    return body.get("status", "?"), datetime.fromisoformat(body["updated_at"]).timestamp()


@pytest.mark.timeout(200)
def test_broker_down_due_events_wait_and_fire(
    tmp_path: Path,
    run_id: str,
    make_valkey: Callable[[str], EmbeddedValkey],
    own_broker: EmbeddedTansu,
    make_service: Callable[[dict[str, str]], ServiceProcess],
    reliability_rows: list[Row],
) -> None:
    service = make_service(service_env(tmp_path, make_valkey("everysec"), own_broker, run_id))
    run = start_scenario(service, own_broker, run_id, send_over=8, due_to=14)
    collector, health, load, topic = run.collector, run.health, run.load, run.topic
    try:
        time.sleep(5)
        killed_at = time.time()
        own_broker.kill()
        time.sleep(DOWN_SECONDS)
        own_broker.start()
        restarted_at = time.time()
        # The in-memory broker came back empty: the topics are re-created by their owners.
        recreate_topics(
            own_broker.bootstrap_servers,
            {topic: 4, "delayed_events": 4, "delayed_events.dlq": 4},
        )
        collector.reconnect()
        load.join(60)
        missing = collector.wait_for(set(load.accepted), timeout=40)
        time.sleep(4)
    finally:
        load.stop()
        health.stop()
        collector.stop()
    fired = collector.snapshot()
    verdict = judge(load, fired)
    # Missing events the service says the old broker acknowledged before it died were lost by
    # the broker (memory storage), not by the scheduler.
    statuses = {sid: status_of(service.base_url, sid) for sid in sorted(missing)[:100]}
    lost_by_broker = {
        sid for sid, (st, at) in statuses.items() if st == "completed" and at <= killed_at + 0.5
    }
    lost_by_scheduler = missing - lost_by_broker
    reliability_rows.append(
        Row(
            scenario="broker stopped and restarted (memory storage)",
            load=len(load.accepted),
            faults=f"1 SIGKILL of the broker, down {DOWN_SECONDS:.0f} s",
            bad_inputs=0,
            lost=len(lost_by_scheduler),
            duplicates=verdict.duplicates,
            health_s=health.first_ok_after(restarted_at),
            firing_s=first_fired_after(fired, restarted_at),
            note=f"{len(lost_by_broker)} fired before the crash but unread, lost with the broker",
        )
    )
    assert service.alive, service.log_tail()
    assert len(load.accepted) == LOAD, (load.statuses, load.errors[:5])
    assert not verdict.mismatched, verdict.mismatched[:5]
    assert not lost_by_scheduler, (
        f"{len(lost_by_scheduler)} accepted events never fired: "
        f"{ {s: statuses.get(s) for s in sorted(lost_by_scheduler)[:5]} }\n"
        f"{describe(sorted(lost_by_scheduler)[:5], load, fired, restarted_at)}\n"
        f"{service.log_tail(3000)}"
    )
    late = {s for s in verdict.duplicated_ids if load.accepted[s].due > restarted_at + 1}
    assert not late, (
        f"duplicates of events due after the outage (times from the restart): "
        f"{describe(sorted(late)[:5], load, fired, restarted_at)}\n{service.log_tail(3000)}"
    )

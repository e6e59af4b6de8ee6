"""A write whose answer never came is 504 "outcome unknown" with the ids to retry with; a store
that cannot be reached is 503 "not stored". Served over HTTP, the real scheduler, the Redis tier
behind its breaker, on a Valkey of the test's own that it stalls (SIGSTOP) and stops."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from delayline.adapters.embedded import EmbeddedTansu, EmbeddedValkey, free_port
from delayline.adapters.guarded import GuardedNearTermStore
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.api.app import create_app
from delayline.bootstrap import Application
from delayline.clock import SystemClock
from delayline.metrics import Metrics
from delayline.resilience import CircuitBreaker
from delayline.services.scheduler import SchedulerService
from delayline.settings import load_settings

from .conftest import ApiServer, AppServer, StaticHealth

SCHEDULES = "/api/v1/schedules"


@pytest.fixture
def stallable(tmp_path: Path) -> Iterator[tuple[EmbeddedValkey, str]]:
    """A Valkey of this test's own and the URL of an API over it (Redis reads time out at
    0.5 s, as a client configured with a command timeout does)."""
    valkey = EmbeddedValkey(tmp_path / "valkey", port=free_port())
    valkey.start()
    client = Redis.from_url(valkey.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    store = RedisNearTermStore(client, prefix="stall", result_ttl_seconds=600)
    near = GuardedNearTermStore(store, CircuitBreaker("redis", failure_threshold=1000))
    service = SchedulerService(near, SystemClock())
    app = create_app(service, analytics=None, health=StaticHealth(), metrics=Metrics(), api_keys=())
    server = ApiServer(app, client.aclose)
    server.start()
    try:
        yield valkey, server.url
    finally:
        pid = valkey.pid
        if pid is not None:
            os.kill(pid, signal.SIGCONT)
        server.stop()
        valkey.stop()


def test_a_stalled_write_is_504_outcome_unknown_and_a_retry_with_its_id_is_safe(
    stallable: tuple[EmbeddedValkey, str],
) -> None:
    valkey, url = stallable
    pid = valkey.pid
    assert pid is not None
    event = {"topic": "stalled", "delay_seconds": 60, "body": "b"}
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.post(SCHEDULES, json=event).status_code == 201
        os.kill(pid, signal.SIGSTOP)
        try:
            answer = client.post(SCHEDULES, json=event)  # old code: 503 "not stored"
        finally:
            os.kill(pid, signal.SIGCONT)
        assert answer.status_code == 504, answer.text
        error = answer.json()
        assert error["error"].startswith("outcome unknown: retry with the same schedule_id")
        [sid] = error["schedule_ids"]
        # The write may have landed once Valkey resumed; a retry with its id never duplicates.
        deadline = time.monotonic() + 20
        while True:
            retry = client.post(SCHEDULES, json={**event, "schedule_id": sid})
            if retry.status_code == 201 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert retry.status_code == 201, retry.text
        again = client.post(SCHEDULES, json={**event, "schedule_id": sid})
        assert again.json()["created"] is False
        assert client.get(f"{SCHEDULES}/{sid}").status_code == 200


def test_an_unreachable_store_is_503_not_stored(stallable: tuple[EmbeddedValkey, str]) -> None:
    valkey, url = stallable
    valkey.stop()
    with httpx.Client(base_url=url, timeout=30) as client:
        answer = client.post(SCHEDULES, json={"topic": "t", "delay_seconds": 60})
    assert answer.status_code == 503, answer.text
    assert "schedule_ids" not in answer.json()


def test_the_served_application_answers_504_while_valkey_stalls(
    tmp_path: Path,
    broker: EmbeddedTansu,
    clickhouse_dsn: str,
    clickhouse_root: object,  # the session's engine stays open: the application shares it
    unique: str,
) -> None:
    """The whole service at its settings (only the command timeout shortened): a write that
    reached a stalled Valkey is answered 504 with its id, not held until Valkey resumes."""
    valkey = EmbeddedValkey(tmp_path / "valkey", port=free_port())
    valkey.start()
    settings = load_settings(
        redis_url=valkey.url,
        redis_key_prefix=f"t-{unique}",
        redis_command_timeout=0.5,
        kafka_bootstrap_servers=broker.bootstrap_servers,
        kafka_delayed_topic_name=f"delayed-{unique}",
        kafka_dead_letter_topic_name=f"delayed-{unique}.dlq",
        kafka_consumer_group=f"group-{unique}",
        clickhouse_dsn=clickhouse_dsn,
        clickhouse_database=f"stall_{unique}",
        data_dir=tmp_path / "app",
        api_port=free_port(),
    )
    server = AppServer(Application(settings))
    server.start()
    pid = valkey.pid
    assert pid is not None
    event = {"topic": f"stalled-{unique}", "delay_seconds": 3, "body": "b"}
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            assert client.post(SCHEDULES, json=event).status_code == 201
            os.kill(pid, signal.SIGSTOP)
            try:
                answer = client.post(SCHEDULES, json=event)  # before: held until SIGCONT
            finally:
                os.kill(pid, signal.SIGCONT)
            assert answer.status_code == 504, answer.text
            [sid] = answer.json()["schedule_ids"]
            deadline = time.monotonic() + 20
            while (
                retry := client.post(SCHEDULES, json={**event, "schedule_id": sid})
            ).status_code != 201:
                assert time.monotonic() < deadline, retry.text
                time.sleep(0.2)
            assert client.get(f"{SCHEDULES}/{sid}").status_code == 200
    finally:
        os.kill(pid, signal.SIGCONT)
        server.stop()
        valkey.stop()

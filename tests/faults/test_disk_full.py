"""Disk full under a served ``delayline serve``: Valkey's AOF on a small tmpfs that fills up.

Valkey then refuses writes (``MISCONF``): the API answers 507 with the reason (never 500 nor a
reset connection), health says degraded with the reason, nothing is answered 2xx that was not
written; once space is back, scheduling works again and what was accepted fires.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from redis import Redis
from redis.exceptions import ResponseError

from delayline.adapters.embedded import EmbeddedTansu, EmbeddedValkey, free_port
from tests.faults.harness import HEALTH, SCHEDULES, ServiceProcess, TopicCollector
from tests.support import create_topics

pytestmark = pytest.mark.faults


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 20 MB tmpfs (needs root to mount)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    """Fill ``disk`` completely with one file; returns it (remove it to free the space)."""
    filler = disk / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * (256 * 1024))
                out.flush()
        except OSError:
            pass
    return filler


def _until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


def test_a_full_disk_is_507_and_degraded_never_500_and_nothing_lost(
    tmp_path: Path, small_disk: Path
) -> None:
    valkey = EmbeddedValkey(small_disk / "valkey", appendfsync="everysec", port=free_port())
    valkey.start()
    broker = EmbeddedTansu(port=free_port(), log_path=tmp_path / "tansu.log")
    broker.start()
    topic = f"disk-{time.time_ns()}"
    create_topics(broker.bootstrap_servers, topic)
    service = ServiceProcess(
        {
            "SCHEDULES_DATA_DIR": str(tmp_path / "data"),
            "SCHEDULES_API_PORT": str(free_port()),
            "SCHEDULES_REDIS_URL": valkey.url,
            "SCHEDULES_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "SCHEDULES_REDIS_PROCESSING_INTERVAL": "1",
        },
        tmp_path / "serve.log",
    )
    collector = TopicCollector(broker.bootstrap_servers, {topic: 1})
    raw = Redis.from_url(valkey.url)
    client = httpx.Client(base_url=service.base_url, timeout=30)
    accepted: set[str] = set()
    try:
        service.start()
        collector.start()

        def post(sid: str) -> httpx.Response:
            when = datetime.now(UTC) + timedelta(seconds=3)
            event = {"topic": topic, "schedule_id": sid, "scheduled_at": when.isoformat()}
            answer = client.post(SCHEDULES, json={**event, "body": "x" * 2000})
            if 200 <= answer.status_code < 300:
                accepted.add(sid)
            return answer

        assert post("before-full").status_code == 201
        filler = _fill(small_disk)

        def refuses_writes() -> bool:
            try:
                raw.set("disk-probe", "x" * 100_000)
            except ResponseError as exc:
                return "MISCONF" in str(exc)
            return False

        _until(refuses_writes, 30, "Valkey refuses writes on a full disk")
        statuses = [post(f"full-{i}").status_code for i in range(20)]
        assert set(statuses) <= {507, 503}, statuses  # old code: 500
        full = post("full-last")
        assert full.status_code in {507, 503}, full.text
        assert "disk" in full.json()["error"], full.text
        health = client.get(HEALTH)
        assert health.status_code == 200, health.text
        report = health.json()
        assert report["status"] == "degraded", report
        assert report["dependencies"]["redis"]["status"] == "full", report
        assert "MISCONF" in report["dependencies"]["redis"]["error"], report

        filler.unlink()
        _until(lambda: post("after-full").status_code == 201, 60, "scheduling works again")
        assert client.get(HEALTH).json()["dependencies"]["redis"]["status"] == "up"
        assert collector.wait_for(accepted, timeout=30) == set(), service.log_tail()
        assert service.alive
        log = service.log_tail(100_000)
        assert "unhandled error" not in log, log
    finally:
        client.close()
        raw.close()
        collector.stop()
        service.stop()
        broker.stop()
        valkey.stop()

"""`delayline serve` with the dispatcher in its own process or thread (the default): events fire,
their outcomes reach the service, the child is restarted when killed, drains on SIGTERM and dies
with a killed service. Real servers: the embedded Valkey and chDB of each service, the session's
Kafka-protocol broker (so fired messages outlive a service's restart)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from delayline.adapters.embedded import EmbeddedTansu, EmbeddedValkey, free_port
from delayline.services.scheduler_service import scheduler_service
from delayline.settings import load_settings
from tests.support import TopicReader

HEALTH = "/api/v1/schedules/monitoring/health"
PROCESS = {"SCHEDULES_FIRING_RUNTIME": "process"}


class Served:
    """One `delayline serve` process on a data dir under ``tmp_path``."""

    def __init__(self, tmp_path: Path, bootstrap: str, token: str, **extra: str) -> None:
        self.log_path = tmp_path / "serve.log"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {key: value for key, value in os.environ.items() if not key.startswith("SCHEDULES_")}
        self.env = {
            **env,
            "SCHEDULES_DATA_DIR": str(tmp_path / "data"),
            "SCHEDULES_API_PORT": str(self.port),
            "SCHEDULES_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "SCHEDULES_KAFKA_DELAYED_TOPIC_NAME": f"delayed-{token}",
            "SCHEDULES_KAFKA_DEAD_LETTER_TOPIC_NAME": f"delayed-{token}.dlq",
            "SCHEDULES_KAFKA_CONSUMER_GROUP": f"group-{token}",
            "SCHEDULES_ANALYTICS_FLUSH_INTERVAL": "0.2",
            **extra,
        }
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "delayline", "serve"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(self.base + HEALTH).status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        proc.kill()
        proc.wait()
        raise AssertionError("service did not become healthy:\n" + self.log())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def firing_children(self) -> set[int]:
        """The service's children started by multiprocessing's spawn (the firing process)."""
        return _spawned_children(self.proc.pid)

    def stop(self) -> int:
        """SIGTERM, then the exit code (killed after 60 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def schedule(self, topic: str, count: int, first_in: float, spread: float) -> list[str]:
        """Schedule ``count`` events due from ``first_in`` s on, spread over ``spread`` s."""
        first = datetime.now(UTC) + timedelta(seconds=first_in)
        events = [
            {
                "topic": topic,
                "body": f"event {i}",
                "scheduled_at": (first + timedelta(seconds=spread * i / count)).isoformat(),
            }
            for i in range(count)
        ]
        answer = httpx.post(f"{self.base}/api/v1/schedules", json={"events": events}, timeout=30)
        assert answer.status_code == 201, answer.text
        return [r["schedule_id"] for r in answer.json()["results"]]

    def health(self) -> dict[str, object]:
        return dict(httpx.get(self.base + HEALTH, timeout=10).json())

    def metric(self, line_start: str) -> float:
        text = httpx.get(f"{self.base}/api/v1/schedules/monitoring/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith(line_start + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no metric {line_start}")


def _spawned_children(parent: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == parent and stat[0] != "Z" and b"spawn_main" in cmdline:
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _ids(reader: TopicReader) -> list[str]:
    return [m.header("x-schedule-id") for m in reader.messages]


@pytest.fixture
def token() -> str:
    return uuid.uuid4().hex[:10]


@pytest.mark.parametrize("runtime", ["process", "thread"])
def test_events_fire_and_their_outcomes_reach_the_service(
    tmp_path: Path, broker: EmbeddedTansu, token: str, runtime: str
) -> None:
    topic = f"fire-{token}"
    reader = TopicReader(broker.bootstrap_servers, topic)
    extra = {} if runtime == "thread" else {"SCHEDULES_FIRING_RUNTIME": runtime}
    served = Served(tmp_path, broker.bootstrap_servers, token, **extra)
    try:
        children = served.firing_children()
        assert len(children) == (1 if runtime == "process" else 0)
        ids = served.schedule(topic, 5, first_in=1, spread=0.5)
        fired = {m.header("x-schedule-id"): m for m in reader.read(5, timeout=30)}
        assert sorted(fired) == sorted(ids)
        for schedule_id in ids:
            record = httpx.get(f"{served.base}/api/v1/schedules/{schedule_id}").json()
            assert record["status"] == "completed", record
            assert record["fired_at"] is not None
            message = fired[schedule_id]
            assert (record["kafka_partition"], record["kafka_offset"]) == (
                message.partition,
                message.offset,
            )
            history = httpx.get(f"{served.base}/api/v1/schedules/{schedule_id}/history").json()
            assert "published" in str(history) and "completed" in str(history)

        def analytics_counted() -> bool:
            summary = httpx.get(
                f"{served.base}/api/v1/schedules/monitoring/analytics/summary"
            ).json()
            return bool(summary["total_executions"] == 5)

        _wait_for(analytics_counted, 30, "the analytics to count the five executions")
        assert served.metric('delayline_events_fired_total{outcome="success"}') == 5
        health = served.health()
        assert health["status"] == "ok", health
        assert health["dependencies"]["firing"]["status"] == "up"  # type: ignore[index]
        assert health["dependencies"]["kafka"]["status"] == "up"  # type: ignore[index]
        assert served.firing_children() == children
    finally:
        code = served.stop()
        reader.close()
    assert code == 0, served.log()[-3000:]
    assert all(not _alive(pid) for pid in children)


def test_a_killed_firing_process_is_restarted_and_loses_no_event(
    tmp_path: Path, broker: EmbeddedTansu, token: str
) -> None:
    topic = f"kill-{token}"
    reader = TopicReader(broker.bootstrap_servers, topic)
    served = Served(
        tmp_path, broker.bootstrap_servers, token, SCHEDULES_LEASE_SECONDS="3", **PROCESS
    )
    try:
        [child] = served.firing_children()
        ids = served.schedule(topic, 300, first_in=1, spread=4)
        reader.read(30, timeout=30)
        os.kill(child, signal.SIGKILL)  # mid-firing: some events claimed, not acknowledged
        _wait_for(lambda: len(served.firing_children() - {child}) == 1, 60, "a new child")

        def all_fired() -> bool:
            reader.read_for(0.5)
            return set(_ids(reader)) >= set(ids)

        _wait_for(all_fired, 90, "every event to fire")  # reclaimed once their leases expired
        assert set(_ids(reader)) == set(ids)
        assert "exited unexpectedly" in served.log()
        assert served.metric("delayline_firing_process_restarts_total") == 1
        _wait_for(
            lambda: served.health()["dependencies"]["firing"]["status"] == "up",  # type: ignore[index]
            30,
            "health to show firing up",
        )
    finally:
        code = served.stop()
        reader.close()
    assert code == 0, served.log()[-3000:]


def test_sigterm_drains_the_firing_process_and_a_restart_fires_each_event_once(
    tmp_path: Path, broker: EmbeddedTansu, token: str
) -> None:
    topic = f"drain-{token}"
    reader = TopicReader(broker.bootstrap_servers, topic)
    served = Served(tmp_path, broker.bootstrap_servers, token, **PROCESS)
    try:
        ids = served.schedule(topic, 400, first_in=1, spread=6)
        reader.read(60, timeout=30)
    finally:
        code = served.stop()  # mid-firing
    assert code == 0, served.log()[-3000:]
    assert "firing process draining (asked by the parent)" in served.log()
    before = len(reader.read_for(2))
    assert 0 < before < len(ids)  # stopped while firing, with events left for the restart
    again = Served(tmp_path, broker.bootstrap_servers, token, **PROCESS)
    try:
        reader.read(len(ids), timeout=60)
        reader.read_for(3)  # anything fired a second time would arrive now
    finally:
        code = again.stop()
        reader.close()
    assert code == 0, again.log()[-3000:]
    counts = Counter(_ids(reader))
    assert set(counts) == set(ids)
    assert [i for i, n in counts.items() if n > 1] == []


def test_the_firing_process_exits_with_a_killed_service(
    tmp_path: Path, broker: EmbeddedTansu, token: str
) -> None:
    served = Served(tmp_path, broker.bootstrap_servers, token, **PROCESS)
    [child] = served.firing_children()
    assert re.search(rb"spawn_main", Path(f"/proc/{child}/cmdline").read_bytes())
    served.proc.kill()
    served.proc.wait(10)
    _wait_for(lambda: not _alive(child), 40, "the orphaned firing process to exit")


@pytest.mark.parametrize("chosen", [None, "process"])
async def test_scheduler_service_in_a_callers_process_fires_from_a_thread_unless_told(
    valkey: EmbeddedValkey,
    clickhouse_dsn: str,
    clickhouse_root: object,  # the session's engine: this service shares its folder
    broker: EmbeddedTansu,
    tmp_path: Path,
    token: str,
    chosen: str | None,
) -> None:
    topic = f"inproc-{token}"
    reader = TopicReader(broker.bootstrap_servers, topic)
    settings = load_settings(
        redis_url=valkey.url,
        redis_key_prefix=f"inproc-{token}",
        kafka_bootstrap_servers=broker.bootstrap_servers,
        clickhouse_dsn=clickhouse_dsn,
        clickhouse_database=f"inproc_{token}",
        data_dir=tmp_path,
        **({} if chosen is None else {"firing_runtime": chosen}),
    )
    await scheduler_service.start(settings)
    try:
        children = _spawned_children(os.getpid())
        assert len(children) == (0 if chosen is None else 1)
        schedule_id = await scheduler_service.schedule_event(
            topic=topic, body="x", scheduled_at=datetime.now(UTC) + timedelta(seconds=0.5)
        )
        [message] = await asyncio.to_thread(reader.read, 1, 30)
        assert message.header("x-schedule-id") == schedule_id
    finally:
        await scheduler_service.stop()
        reader.close()
    assert all(not _alive(pid) for pid in children)

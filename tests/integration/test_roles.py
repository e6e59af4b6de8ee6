"""Roles: a process that only schedules never fires; another process with the fire role fires
its events; processes whose servers are all external share one data directory."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from delayline import scheduler_service
from delayline.adapters.embedded import EmbeddedTansu, EmbeddedValkey
from delayline.bootstrap import Application, DataDirInUseError, RoleNotRunError
from delayline.domain.events import EventStatus
from delayline.settings import load_settings
from tests.support import TopicReader

EVENTS = 20


def _serve(roles: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "delayline", "serve", "--roles", roles],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def test_a_schedule_only_process_never_fires_and_a_fire_process_fires_its_events(
    valkey: EmbeddedValkey,
    broker: EmbeddedTansu,
    clickhouse_dsn: str,
    clickhouse_root: object,  # the session's engine: the scheduling side shares its folder
    tmp_path: Path,
    unique: str,
) -> None:
    shared = tmp_path / "shared"  # one data directory for both processes
    topic = f"roles-{unique}"
    reader = TopicReader(broker.bootstrap_servers, topic)
    settings = load_settings(
        redis_url=valkey.url,
        redis_key_prefix=f"roles-{unique}",
        kafka_bootstrap_servers=broker.bootstrap_servers,
        clickhouse_dsn=clickhouse_dsn,
        clickhouse_database=f"roles_{unique}",
        data_dir=shared,
    )
    await scheduler_service.start(settings, roles={"schedule"})
    firing: subprocess.Popen[bytes] | None = None
    try:
        assert scheduler_service.roles == {"schedule"}
        due = datetime.now(UTC) + timedelta(seconds=0.2)
        ids = await scheduler_service.schedule_bulk(
            [{"topic": topic, "body": f"b{i}", "scheduled_at": due} for i in range(EVENTS)]
        )
        # Well past due: nothing in this process fired them.
        assert await asyncio.to_thread(reader.read_for, 2.0) == []
        for schedule_id in ids:
            event = await scheduler_service.get_event(schedule_id)
            assert event is not None and event.status is EventStatus.PENDING

        # Another process with the fire role (and its own chDB for its outcomes) fires them.
        firing = _serve(
            "fire",
            {
                "SCHEDULES_REDIS_URL": valkey.url,
                "SCHEDULES_REDIS_KEY_PREFIX": f"roles-{unique}",
                "SCHEDULES_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
                "SCHEDULES_CLICKHOUSE_DSN": f"chdb://{(tmp_path / 'fire-ch').as_posix()}",
                "SCHEDULES_DATA_DIR": str(shared),
            },
            tmp_path / "fire.log",
        )
        fired = await asyncio.to_thread(reader.read, EVENTS, 90)
        assert sorted(m.header("x-schedule-id") for m in fired) == sorted(ids), (
            tmp_path / "fire.log"
        ).read_text()[-3000:]
        assert not (shared / ".lock").exists()  # neither process owns the shared directory
    finally:
        await scheduler_service.stop()
        if firing is not None:
            firing.send_signal(signal.SIGTERM)
            assert firing.wait(60) == 0, (tmp_path / "fire.log").read_text()[-3000:]
        reader.close()
    assert "roles fire" in (tmp_path / "fire.log").read_text()


async def test_external_servers_share_a_data_dir_and_health_shows_only_what_runs(
    valkey: EmbeddedValkey,
    clickhouse_dsn: str,
    clickhouse_root: object,
    tmp_path: Path,
    unique: str,
) -> None:
    shared = tmp_path / "shared"
    settings = load_settings(
        redis_url=valkey.url,
        redis_key_prefix=f"share-{unique}",
        clickhouse_dsn=clickhouse_dsn,
        clickhouse_database=f"share_{unique}",
        data_dir=shared,
    )
    first = Application(settings, roles={"schedule"})
    second = Application(settings, roles={"schedule", "sync"})
    async with first, second:  # a lock would refuse the second: flock conflicts per open
        health = await first.health().check()
        assert set(health["dependencies"]) == {"redis", "clickhouse"}
        assert set(health["breakers"]) == {"redis", "clickhouse"}
        assert health["status"] == "ok"
        assert b"kafka_producer" not in first.metrics.render()
        await first.service.schedule_event(topic="t", body="x", delay_seconds=60)
    fire_only = Application(settings, roles={"fire"})
    with pytest.raises(RoleNotRunError, match="does not schedule"):
        _ = fire_only.service


async def test_an_embedded_server_owns_the_data_dir(
    clickhouse_dsn: str, clickhouse_root: object, tmp_path: Path, unique: str
) -> None:
    settings = load_settings(  # an embedded Valkey: its AOF lives in the data directory
        redis_key_prefix=f"own-{unique}",
        clickhouse_dsn=clickhouse_dsn,
        clickhouse_database=f"own_{unique}",
        data_dir=tmp_path / "owned",
    )
    async with Application(settings, roles={"schedule"}):
        with pytest.raises(DataDirInUseError, match="in use by another delayline process"):
            await Application(settings, roles={"schedule"}).start()

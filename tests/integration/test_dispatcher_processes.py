"""Several dispatcher processes on one Redis; one of them killed with SIGKILL mid-claim."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from redis.asyncio import Redis

from delayline.adapters.embedded import EmbeddedTansu, EmbeddedValkey, free_port
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.clock import SystemClock
from delayline.domain.events import utc_now
from delayline.services.scheduler import SchedulerService
from tests.support import TopicReader

ROOT = Path(__file__).resolve().parents[2]


def _spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.integration.dispatcher_proc"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _env(
    valkey: EmbeddedValkey, prefix: str, bootstrap: str, data: Path, lease: float = 3
) -> dict[str, str]:
    return {
        "SCHEDULES_REDIS_URL": valkey.url,
        "SCHEDULES_REDIS_KEY_PREFIX": prefix,
        "SCHEDULES_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "SCHEDULES_LEASE_SECONDS": str(lease),
        "SCHEDULES_DATA_DIR": str(data),
        "SCHEDULES_REDIS_PROCESSING_INTERVAL": "1",
    }


async def _wait_until(predicate: object, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


@pytest.mark.timeout(240)
async def test_two_dispatchers_never_publish_one_event_twice(
    store: RedisNearTermStore,
    redis_client: Redis,
    valkey: EmbeddedValkey,
    broker: EmbeddedTansu,
    unique: str,
    tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    topic = f"two-{unique}"
    reader = TopicReader(broker.bootstrap_servers, topic)
    prefix = f"t-{unique}"
    for i in range(2):
        # normal running: a lease long enough that a slow, shared machine never expires one
        env = _env(valkey, prefix, broker.bootstrap_servers, tmp_path / f"d{i}", lease=30)
        procs.append(_spawn(env, tmp_path / f"d{i}.log"))
    service = SchedulerService(store, SystemClock())
    base = utc_now() + timedelta(seconds=2)
    events = [
        service.build_event(topic=topic, body=str(i), scheduled_at=base + timedelta(milliseconds=i))
        for i in range(2000)
    ]
    await service.schedule_events(events)
    live = await asyncio.to_thread(reader.read, 2000, 100)  # a lost claim reply: +lease
    await asyncio.to_thread(reader.read_for, 1.0)
    reader.close()
    # Judge on a fresh read of the whole topic from offset 0: what the broker holds.
    again = TopicReader(broker.bootstrap_servers, topic, create=False)
    msgs = await asyncio.to_thread(again.read, 2000, 30)
    await asyncio.to_thread(again.read_for, 1.0)
    again.close()
    ids = Counter(m.header("x-schedule-id") for m in msgs)
    missing = {e.schedule_id for e in events} - set(ids)
    # The dispatchers remember outcomes with their own (default) result TTL buckets.
    theirs = RedisNearTermStore(redis_client, prefix=prefix, result_ttl_seconds=3600)
    where = {sid: await theirs.get(sid) for sid in sorted(missing)[:5]}
    assert not missing, (
        len(missing),
        len(live),
        {k: v and (v.status, v.updated_at.isoformat()) for k, v in where.items()},
    )
    assert len(msgs) == 2000
    assert set(ids) == {e.schedule_id for e in events}
    assert max(ids.values()) == 1
    counts = await store.counts()
    assert counts["completed"] == 2000


async def test_killed_dispatcher_events_are_reclaimed_and_fire(
    store: RedisNearTermStore,
    valkey: EmbeddedValkey,
    broker: EmbeddedTansu,
    unique: str,
    tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    topic = f"kill-{unique}"
    reader = TopicReader(broker.bootstrap_servers, topic)
    prefix = f"t-{unique}"
    # The first dispatcher publishes to a broker that is not there: it claims and hangs.
    dead_end = f"127.0.0.1:{free_port()}"
    victim = _spawn(_env(valkey, prefix, dead_end, tmp_path / "victim"), tmp_path / "v.log")
    procs.append(victim)
    service = SchedulerService(store, SystemClock())
    events = [
        service.build_event(topic=topic, body=str(i), scheduled_at=utc_now()) for i in range(50)
    ]
    await service.schedule_events(events)

    async def all_claimed() -> bool:
        return (await store.counts())["processing"] == 50

    await _wait_until(all_claimed, 20)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    # A healthy dispatcher takes the events over once the 3 s lease has expired.
    env = _env(valkey, prefix, broker.bootstrap_servers, tmp_path / "rescuer")
    procs.append(_spawn(env, tmp_path / "r.log"))
    msgs = await asyncio.to_thread(reader.read, 50, 30)
    reader.close()
    assert sorted(m.header("x-schedule-id") for m in msgs) == sorted(e.schedule_id for e in events)

"""`delayline serve` and shard ownership: one process owns every shard by default; with
``--workers N`` the shards are shared by N firing processes whose outcomes reach the front
process; more workers than shards is refused at start. Real servers: each service's embedded
Valkey and chDB, the session's Kafka-protocol broker."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from delayline.adapters.embedded import EmbeddedTansu
from tests.integration.test_firing_process import Served, _alive, _wait_for
from tests.support import TopicReader


@pytest.fixture
def token() -> str:
    return uuid.uuid4().hex[:10]


def _shards(served: Served) -> dict[str, Any]:
    shards = served.health()["shards"]
    assert isinstance(shards, dict), shards
    return shards


def test_a_single_process_owns_every_shard(
    tmp_path: Path, broker: EmbeddedTansu, token: str
) -> None:
    served = Served(tmp_path, broker.bootstrap_servers, token, SCHEDULES_REDIS_SHARDS="3")
    try:
        shards = _shards(served)
        (node,) = shards["this_process"]
        assert node["owned"] == [0, 1, 2], shards
        holders = {value.rpartition(":")[0] for value in shards["holders"].values()}
        assert holders == {node["node_id"]}, shards
        owned = served.metric(f'delayline_owned_shards{{node="{node["node_id"]}"}}')
        assert owned == 3
        topic = f"single-{token}"
        reader = TopicReader(broker.bootstrap_servers, topic)
        try:
            ids = served.schedule(topic, 30, first_in=0.5, spread=0.5)
            fired = [m.header("x-schedule-id") for m in reader.read(30, timeout=30)]
            assert sorted(fired) == sorted(ids)
        finally:
            reader.close()
    finally:
        code = served.stop()
    assert code == 0, served.log()[-3000:]


def test_two_workers_share_the_shards_and_their_outcomes_reach_the_front(
    tmp_path: Path, broker: EmbeddedTansu, token: str
) -> None:
    topic = f"workers-{token}"
    reader = TopicReader(broker.bootstrap_servers, topic)
    served = Served(
        tmp_path,
        broker.bootstrap_servers,
        token,
        SCHEDULES_WORKERS="2",
        SCHEDULES_REDIS_SHARDS="4",
        SCHEDULES_LEASE_SECONDS="3",
    )
    children: set[int] = set()
    try:
        children = served.firing_children()
        assert len(children) == 2

        def balanced() -> bool:
            nodes = _shards(served)["this_process"]
            return len(nodes) == 2 and sorted(len(n["owned"]) for n in nodes) == [2, 2]

        _wait_for(balanced, 30, "the two workers to own two shards each")
        shards = _shards(served)
        names = {n["node_id"] for n in shards["this_process"]}
        assert {name.rsplit("-", 1)[1] for name in names} == {"w0", "w1"}
        assert {v.rpartition(":")[0] for v in shards["holders"].values()} == names
        for name in names:
            assert served.metric(f'delayline_owned_shards{{node="{name}"}}') == 2

        ids = served.schedule(topic, 400, first_in=1, spread=1)
        fired = Counter(m.header("x-schedule-id") for m in reader.read_ids(ids, timeout=60))
        assert sorted(fired) == sorted(ids)
        if set(fired.values()) != {1}:  # at least once: only a batch that outlived its lease
            assert "they fire again" in served.log(), fired.most_common(3)  # fires again, logged

        def published_by() -> list[str]:
            return [
                step["node"]
                for schedule_id in ids[:20]
                for step in httpx.get(f"{served.base}/api/v1/schedules/{schedule_id}/history")
                .json()
                .get("transitions", [])
                if step["transition"] == "published"
            ]

        _wait_for(lambda: len(published_by()) == 20, 30, "the history of the first events")
        assert set(published_by()) <= names, published_by()
        _wait_for(
            lambda: served.metric('delayline_events_fired_total{outcome="success"}') == 400,
            30,
            "the front to count every outcome",
        )
        assert served.health()["dependencies"]["firing"]["status"] == "up"  # type: ignore[index]
    finally:
        code = served.stop()
        reader.close()
    assert code == 0, served.log()[-3000:]
    assert all(not _alive(pid) for pid in children)


def test_more_workers_than_shards_is_refused_at_start(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SCHEDULES_")}
    env |= {"SCHEDULES_DATA_DIR": str(tmp_path / "data"), "SCHEDULES_REDIS_SHARDS": "2"}
    done = subprocess.run(
        [sys.executable, "-m", "delayline", "serve", "--workers", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "SCHEDULES_REDIS_SHARDS" in done.stderr and "reshard" in done.stderr, done.stderr
    assert not (tmp_path / "data").exists()  # refused before anything started

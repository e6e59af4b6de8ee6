"""A consumer SIGKILLed after storing but before committing creates no duplicate on restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from delayline.adapters.embedded import EmbeddedValkey
from delayline.adapters.redis_store import RedisNearTermStore
from tests.integration.kafka.conftest import Ingress, until

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def run(*args: str) -> subprocess.Popen[bytes]:
        with (tmp_path / "consumer.log").open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.integration.kafka.consumer_proc", *args],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        started.append(proc)
        return proc

    yield run
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _state(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


async def test_sigkill_before_commit_creates_no_duplicate(
    ingress: Ingress,
    store: RedisNearTermStore,
    valkey: EmbeddedValkey,
    unique: str,
    tmp_path: Path,
    spawn: Callable[..., subprocess.Popen[bytes]],
) -> None:
    count = 50
    hdrs: list[tuple[str, bytes | None]] = [("x-topic", b"t"), ("x-delay-seconds", b"600")]
    sent = ingress.produce(*[(None, f"m{i}".encode(), hdrs) for i in range(count)])
    args = [
        valkey.url,
        f"t-{unique}",
        ingress.bootstrap,
        ingress.topic,
        ingress.group,
        ingress.dlq,
        str(tmp_path),
    ]
    first = spawn(*args, "--hang-before-commit")

    async def stored() -> bool:
        assert first.poll() is None, "the consumer process died"
        return (tmp_path / "stored.json").exists()

    await until(stored, 60)
    before = _state(tmp_path / "stored.json")
    assert before is not None
    stored_first = before["stats"]["scheduled"]
    assert stored_first > 0
    assert (await store.counts())["pending"] == stored_first
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    assert ingress.committed(1)[0] < 0  # nothing was committed

    second = spawn(*args)
    done = f"{ingress.topic}:0"

    async def committed_all() -> bool:
        assert second.poll() is None, "the consumer process died"
        state = _state(tmp_path / "committed.json")
        return state is not None and state["offsets"].get(done) == sent[-1].offset + 1

    await until(committed_all, 60)
    after = _state(tmp_path / "committed.json")
    assert after is not None
    # Everything stored before the kill was redelivered and recognised, not stored again.
    assert after["stats"]["duplicates"] == stored_first
    assert after["stats"]["scheduled"] == count - stored_first
    counts = await store.counts()
    assert (counts["pending"], counts["scheduled"]) == (count, count)

"""`delayline serve` on embedded defaults, driven by the CLI from another process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from delayline.adapters.embedded import free_port


def _start_serve(tmp_path: Path) -> tuple[subprocess.Popen[bytes], dict[str, str], str]:
    port = free_port()
    env = {
        **os.environ,
        "SCHEDULES_DATA_DIR": str(tmp_path / "data"),
        "SCHEDULES_API_PORT": str(port),
    }
    for key in ("SCHEDULES_REDIS_URL", "SCHEDULES_KAFKA_BOOTSTRAP_SERVERS"):
        env.pop(key, None)
    with (tmp_path / "serve.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "delayline", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/api/v1/schedules/monitoring/health").status_code == 200:
                return proc, env, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    raise AssertionError("service did not become healthy:\n" + (tmp_path / "serve.log").read_text())


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[dict[str, str], str]]:
    proc, env, base = _start_serve(tmp_path)
    try:
        yield env, base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, (tmp_path / "serve.log").read_text()[-3000:]


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "delayline", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_schedule_with_cli_and_watch_it_fire_with_tail(
    served: tuple[dict[str, str], str],
) -> None:
    env, base = served
    tail = subprocess.Popen(
        [sys.executable, "-m", "delayline", "tail", "cli.demo"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert tail.stdout is not None
        assert "watching cli.demo" in tail.stdout.readline()
        out = _cli(env, "schedule", "cli.demo", '{"hello": 1}', "--in", "2s", "--api-url", base)
        schedule_id = out.strip()
        assert re.fullmatch(r"[0-9a-f]{32}", schedule_id)
        line = tail.stdout.readline()
        assert schedule_id in line
        fired = re.search(r"fired ([+-]\d+\.\d+)s", line)
        assert fired is not None
        assert 0 <= float(fired.group(1)) < 1.0
    finally:
        tail.terminate()
        tail.wait(10)
        if tail.stdout is not None:
            tail.stdout.close()
    stats = _cli(env, "stats", "--api-url", base)
    assert '"redis_pending"' in stats
    later = _cli(env, "schedule", "cli.demo", "x", "--in", "1h", "--api-url", base).strip()
    assert later in _cli(env, "cancel", later, "--api-url", base)


def test_migrate_twice_is_a_no_op(tmp_path: Path) -> None:
    env = {**os.environ, "SCHEDULES_DATA_DIR": str(tmp_path / "data")}
    first = _cli(env, "migrate")
    assert "applying 001" in first
    assert "migration(s) applied" in first
    second = _cli(env, "migrate")
    assert "schema is up to date" in second


def test_invalid_setting_stops_start_up_with_a_clear_message(tmp_path: Path) -> None:
    env = {**os.environ, "SCHEDULES_DATA_DIR": str(tmp_path), "SCHEDULES_LEASE_SECONDS": "-1"}
    done = subprocess.run(
        [sys.executable, "-m", "delayline", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "SCHEDULES_LEASE_SECONDS" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_second_signal_exits_at_once(tmp_path: Path) -> None:
    proc, _env, _base = _start_serve(tmp_path)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert code == 130  # exited on the second signal, without waiting for the drain


def test_a_second_service_on_the_same_folder_stops_with_a_clear_message(tmp_path: Path) -> None:
    first, env, _base = _start_serve(tmp_path)
    try:
        second = subprocess.run(
            [sys.executable, "-m", "delayline", "serve"],
            env={**env, "SCHEDULES_API_PORT": str(free_port())},
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert second.returncode == 1
        folder = str((tmp_path / "data").resolve())
        assert folder in second.stderr.replace("\n", "")
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0

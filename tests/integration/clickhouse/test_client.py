"""The client: one embedded folder per process, a clear error for a second owner."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from delayline.adapters.clickhouse.client import ClickHouseClient, chdb_folder

HOLDER = Path(__file__).with_name("folder_holder.py")


def test_a_second_process_on_the_same_folder_gets_a_clear_error(tmp_path: Path) -> None:
    folder = (tmp_path / "owned").resolve()
    with subprocess.Popen(
        [sys.executable, str(HOLDER), "hold", str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdin is not None and holder.stdout is not None
        try:
            assert holder.stdout.readline().strip() == "READY"
            second = subprocess.run(
                [sys.executable, str(HOLDER), "open", str(folder)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert second.returncode == 3, second.stdout + second.stderr
            assert second.stdout.startswith("IN_USE ")
            assert str(folder) in second.stdout
            assert "in use by another process" in second.stdout
        finally:
            holder.stdin.close()
            holder.wait(timeout=60)
    assert holder.returncode == 0
    # Once the owner is gone the folder opens again.
    reopened = subprocess.run(
        [sys.executable, str(HOLDER), "open", str(folder)], capture_output=True, text=True
    )
    assert reopened.returncode == 0, reopened.stdout + reopened.stderr


def test_dsn_parsing() -> None:
    assert chdb_folder("chdb:///var/lib/x") == "/var/lib/x"
    assert chdb_folder("http://h:8123/db") is None
    assert ClickHouseClient("http://u:p@h:8123/sched").database == "sched"
    assert ClickHouseClient("chdb:///tmp/folder").database == "delayline"
    assert ClickHouseClient("chdb:///tmp/folder", "other").database == "other"
    with pytest.raises(ValueError, match="invalid ClickHouse database name"):
        ClickHouseClient("chdb:///tmp/folder", "bad-name; DROP")


async def test_calls_before_start_fail_clearly() -> None:
    client = ClickHouseClient("chdb:///nonexistent/never-opened")
    with pytest.raises(RuntimeError, match="not started"):
        await client.query("SELECT 1")
    await client.stop()  # idempotent, even when never started


async def test_query_command_and_types(ch_client: ClickHouseClient) -> None:
    rows = await ch_client.query("SELECT {a:Int64} + 1, {s:String}", {"a": 41, "s": "x"})
    assert [tuple(r) for r in rows] == [(42, "x")]
    assert int(await ch_client.command("SELECT 7")) == 7
    await ch_client.start()  # idempotent

"""The light client module: what it builds, and that it stays light."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from delayline.domain.wire import derive_schedule_id
from delayline.events_client import build_delayed_message, get_event_bus


def test_headers_for_delay() -> None:
    key, value, headers = build_delayed_message(
        topic="t", body="b", delay_seconds=5, schedule_id="s", correlation_id="c", priority=1
    )
    assert key == b"s"  # the schedule id: a tombstone with this key cancels it
    assert value == b"b"
    assert dict(headers) == {
        "x-topic": b"t",
        "x-delay-seconds": b"5.0",
        "x-correlation-id": b"c",
        "x-priority": b"1",
        "x-schedule-id": b"s",
    }


def test_every_message_names_its_event_so_a_retry_is_stored_once() -> None:
    key, _, headers = build_delayed_message(topic="t", delay_seconds=5, correlation_id="c")
    sid = dict(headers)["x-schedule-id"]
    assert key == sid
    assert re.fullmatch(rb"[0-9a-f]{32}", sid)
    _, _, again = build_delayed_message(topic="t", delay_seconds=5, correlation_id="c")
    assert dict(again)["x-schedule-id"] != sid  # a new event gets a new id


def test_headers_for_absolute_time() -> None:
    when = datetime(2031, 1, 1, 12, 0)
    _, _, headers = build_delayed_message(topic="t", scheduled_at=when)
    assert dict(headers)["x-scheduled-at"] == b"2031-01-01T12:00:00+00:00"
    _, _, headers = build_delayed_message(topic="t", scheduled_at=1924992000000)
    assert dict(headers)["x-scheduled-at"] == b"1924992000000"


def test_requires_exactly_one_time() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        build_delayed_message(topic="t")
    with pytest.raises(ValueError, match="exactly one"):
        build_delayed_message(topic="t", delay_seconds=1, scheduled_at=datetime.now(UTC))


def test_control_headers_cannot_be_smuggled() -> None:
    with pytest.raises(ValueError, match="reserved"):
        build_delayed_message(topic="t", delay_seconds=1, headers={"X-Topic": "other"})


def test_derived_ids_are_stable_and_bounded() -> None:
    assert derive_schedule_id("d", 0, 5, 9) == "d:0:5:9"
    long_id = derive_schedule_id("x" * 249, 3, 5, 9)
    assert long_id == derive_schedule_id("x" * 249, 3, 5, 9)
    assert len(long_id) <= 200
    assert long_id != derive_schedule_id("x" * 249, 3, 5, 10)


def test_get_event_bus_needs_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCHEDULES_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    with pytest.raises(ValueError, match="SCHEDULES_KAFKA_BOOTSTRAP_SERVERS"):
        get_event_bus()


def test_module_is_light() -> None:
    code = (
        "import sys, delayline.events_client\n"
        "heavy = [m for m in ('redis', 'clickhouse_connect', 'chdb', 'fastapi', 'pydantic',"
        " 'delayline.domain.events', 'delayline.settings') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""

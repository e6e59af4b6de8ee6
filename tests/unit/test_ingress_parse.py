"""The delayed-topic message contract: every accepted form and every rejection, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from delayline.adapters.kafka_consumer import KafkaMessage
from delayline.clock import ManualClock
from delayline.domain.events import ScheduledEvent
from delayline.domain.wire import derive_schedule_id
from delayline.events_client import build_delayed_message
from delayline.services.ingress_parse import Cancel, Decision, Reject, Schedule, parse
from delayline.services.scheduler import SchedulerService

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
TS_MS = int(NOW.timestamp() * 1000) - 2000  # produced two seconds before "now"
ENVELOPE = ("content-type", b"application/vnd.delayline.envelope+json")
T1: list[tuple[str, bytes | None]] = [("x-topic", b"t"), ("x-delay-seconds", b"1")]
ETF1 = [("scheduler-epoch", b"1"), ("scheduler-target-topic", b"t")]


def _service() -> SchedulerService:
    return SchedulerService(None, ManualClock(NOW), default_max_delay_seconds=777)  # type: ignore[arg-type]


def _msg(
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]] | None = None,
    key: bytes | None = None,
    offset: int = 7,
    ts: int | None = TS_MS,
) -> KafkaMessage:
    return KafkaMessage("delayed", 1, offset, key, value, tuple(headers or ()), ts)


def _parse(msg: KafkaMessage) -> Decision:
    return parse(msg, _service().build_event, NOW)


def _event(msg: KafkaMessage) -> ScheduledEvent:
    decision = _parse(msg)
    assert isinstance(decision, Schedule), decision
    return decision.event


def _reason(msg: KafkaMessage) -> str:
    decision = _parse(msg)
    assert isinstance(decision, Reject), decision
    return decision.reason


def test_native_headers_full() -> None:
    msg = _msg(
        b'{"user_id": 123}',
        [
            ("x-topic", b"user.notifications"),
            ("x-delay-seconds", b"1800"),
            ("x-entity-type", b"user"),
            ("x-action", b"send_reminder"),
            ("x-correlation-id", b"reminder-123"),
            ("x-priority", b"3"),
            ("x-max-delay-seconds", b"60"),
            ("x-schedule-id", b"sid-1"),
            ("trace", b"abc"),
            ("empty", None),
        ],
        key=b"k",
    )
    ev = _event(msg)
    assert ev.topic == "user.notifications"
    assert ev.body == b'{"user_id": 123}'
    assert ev.scheduled_at == datetime.fromtimestamp(TS_MS / 1000, UTC) + timedelta(seconds=1800)
    assert (ev.entity_type, ev.action, ev.correlation_id) == (
        "user",
        "send_reminder",
        "reminder-123",
    )
    assert (ev.priority, ev.max_delay_seconds, ev.schedule_id) == (3, 60, "sid-1")
    assert dict(ev.headers) == {"trace": "abc", "empty": ""}


def test_native_minimal_derives_id_and_uses_defaults() -> None:
    ev = _event(_msg(b"x", [("x-topic", b"t"), ("x-scheduled-at", b"2031-05-06T07:08:09Z")]))
    assert ev.schedule_id == derive_schedule_id("delayed", 1, 7, TS_MS)
    assert ev.scheduled_at == datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert ev.max_delay_seconds == 777  # the settings' default, through build_event
    assert ev.correlation_id == ""
    # Redelivery of the same record derives the same id.
    again = _event(_msg(b"x", [("x-topic", b"t"), ("x-scheduled-at", b"2031-05-06T07:08:09Z")]))
    assert again.schedule_id == ev.schedule_id


def test_scheduled_at_epoch_millis_and_key_as_correlation_id() -> None:
    ev = _event(_msg(b"", [("x-topic", b"t"), ("x-scheduled-at", b"1900000000123")], key=b"ord-1"))
    assert ev.scheduled_at == datetime.fromtimestamp(1900000000, UTC) + timedelta(milliseconds=123)
    assert ev.correlation_id == "ord-1"
    assert ev.body == b""


def test_delay_counts_from_now_without_timestamp() -> None:
    ev = _event(_msg(b"x", [("x-topic", b"t"), ("x-delay-seconds", b"1.5")], ts=None))
    assert ev.scheduled_at == NOW + timedelta(seconds=1.5)


def test_client_builder_matches_parser() -> None:
    key, value, headers = build_delayed_message(
        topic="user.notifications",
        entity_type="user",
        action="send_reminder",
        body={"user_id": 123},
        delay_seconds=1800,
        correlation_id="reminder-123",
        headers={"h": "v"},
        priority=2,
        max_delay_seconds=5,
    )
    ev = _event(_msg(value, headers, key=key))
    assert key is not None and key == ev.schedule_id.encode()  # always its own id
    assert ev.correlation_id == "reminder-123"
    assert orjson.loads(ev.body) == {"user_id": 123}
    assert (ev.topic, ev.priority, ev.max_delay_seconds) == ("user.notifications", 2, 5)
    assert dict(ev.headers) == {"h": "v"}


def test_envelope() -> None:
    doc: dict[str, Any] = {
        "topic": "orders",
        "body": {"id": 1},
        "scheduled_at": "2031-01-01T00:00:00+00:00",
        "entity_type": "order",
        "action": "expire",
        "headers": {"a": "1"},
        "priority": -4,
        "schedule_id": "env-1",
    }
    ev = _event(_msg(orjson.dumps(doc), [ENVELOPE, ("b", b"2")], key=b"kk"))
    assert (ev.topic, ev.schedule_id, ev.priority, ev.action) == ("orders", "env-1", -4, "expire")
    assert orjson.loads(ev.body) == {"id": 1}
    assert dict(ev.headers) == {"a": "1", "b": "2"}  # content-type itself does not pass
    assert ev.correlation_id == "kk"
    delayed = _event(_msg(b'{"topic": "t", "delay_seconds": 5, "body": 42}', [ENVELOPE]))
    assert delayed.scheduled_at == datetime.fromtimestamp(TS_MS / 1000, UTC) + timedelta(seconds=5)
    assert delayed.body == b"42"


def test_json_value_without_envelope_header_is_a_body() -> None:
    value = b'{"topic": "x", "delay_seconds": 1}'
    ev = _event(_msg(value, [("x-topic", b"t"), ("x-delay-seconds", b"0")]))
    assert ev.body == value
    ct = ("Content-Type", b"application/json")
    ev = _event(_msg(value, [("x-topic", b"t"), ("x-delay-seconds", b"0"), ct]))
    assert dict(ev.headers) == {"Content-Type": "application/json"}


def test_etf1_headers() -> None:
    msg = _msg(
        b"payload",
        [
            ("scheduler-epoch", b"1900000000"),
            ("scheduler-target-topic", b"target"),
            ("scheduler-target-key", b"tk"),
            ("other", b"o"),
        ],
        key=b"etf1-id",
    )
    ev = _event(msg)
    assert (ev.topic, ev.schedule_id, ev.correlation_id) == ("target", "etf1-id", "tk")
    assert ev.scheduled_at == datetime.fromtimestamp(1900000000, UTC)
    assert dict(ev.headers) == {"other": "o"}
    assert ev.message_key == "tk"


@pytest.mark.parametrize(
    ("headers", "key", "expected"),
    [
        ([("x-schedule-id", b"abc")], b"k", "abc"),
        ([], b"from-key", "from-key"),
    ],
)
def test_tombstone_cancels(
    headers: list[tuple[str, bytes | None]], key: bytes, expected: str
) -> None:
    assert _parse(_msg(None, headers, key=key)) == Cancel(expected)


BAD: list[tuple[str, KafkaMessage]] = [
    ("missing_header", _msg(b"x", [("x-delay-seconds", b"1")])),
    ("missing_header", _msg(b"x", [("x-topic", b"t")])),
    ("ambiguous", _msg(b"x", [*T1, ("x-scheduled-at", b"1")])),
    ("invalid_header", _msg(b"x", [("x-topic", b"t"), ("x-delay-seconds", b"soon")])),
    ("invalid_header", _msg(b"x", [("x-topic", b"t"), ("x-delay-seconds", b"-1")])),
    ("invalid_header", _msg(b"x", [("x-topic", b"t"), ("x-delay-seconds", b"nan")])),
    ("invalid_header", _msg(b"x", [*T1, ("x-priority", b"hi")])),
    ("invalid_header", _msg(b"x", [("x-topic", None), ("x-delay-seconds", b"1")])),
    ("invalid_header", _msg(b"x", [("x-topic", b"t"), ("x-scheduled-at", b"9" * 30)])),
    ("invalid_event", _msg(b"x", [("x-topic", b"bad topic"), ("x-delay-seconds", b"1")])),
    ("invalid_event", _msg(b"x", [("x-topic", b"t"), ("x-scheduled-at", b"tomorrow")])),
    ("invalid_event", _msg(b"x", [*T1, ("x-schedule-id", b"a b")])),
    ("invalid_event", _msg(b"x", [*T1, ("h", b"v" * 70000)])),
    ("invalid_utf8", _msg(b"x", [("x-topic", b"t\xff"), ("x-delay-seconds", b"1")])),
    ("invalid_utf8", _msg(b"x", [*T1, ("h", b"\xc3")])),
    ("duplicate_header", _msg(b"x", [*T1, ("X-Topic", b"u")])),
    ("duplicate_header", _msg(b"x", [*T1, ("h", b"1"), ("h", b"2")])),
    ("oversize", _msg(b"x", [("x-topic", b"t" * 2000), ("x-delay-seconds", b"1")])),
    ("ambiguous", _msg(b"x", [("x-topic", b"t"), ("scheduler-epoch", b"1")])),
    ("ambiguous", _msg(b'{"topic": "t", "delay_seconds": 1}', [ENVELOPE, ("x-topic", b"t")])),
    ("missing_header", _msg(b"x", [("scheduler-epoch", b"1")])),
    ("invalid_key", _msg(b"x", ETF1, key=b"\xff")),
    ("invalid_envelope", _msg(b"{not json", [ENVELOPE])),
    ("invalid_envelope", _msg(b"[1]", [ENVELOPE])),
    ("invalid_envelope", _msg(b'{"topic": "t", "delay": 1}', [ENVELOPE])),
    ("invalid_envelope", _msg(b'{"topic": "t"}', [ENVELOPE])),
    ("invalid_envelope", _msg(b'{"delay_seconds": 1}', [ENVELOPE])),
    ("invalid_event", _msg(b'{"topic": "t", "delay_seconds": 1, "priority": "x"}', [ENVELOPE])),
    ("invalid_event", _msg(b'{"topic": "t", "delay_seconds": 1, "headers": [1]}', [ENVELOPE])),
    ("invalid_key", _msg(None, [], key=None)),
    ("invalid_key", _msg(None, [], key=b"\xff")),
]  # fmt: skip


@pytest.mark.parametrize(("code", "msg"), BAD)
def test_bad_messages_are_rejected_with_a_reason(code: str, msg: KafkaMessage) -> None:
    reason = _reason(msg)
    assert reason.split(":", 1)[0] == code, reason
    assert len(reason) > len(code) + 3


def test_body_too_large_is_rejected() -> None:
    service = SchedulerService(None, ManualClock(NOW), max_body_bytes=10)  # type: ignore[arg-type]
    decision = parse(
        _msg(b"x" * 11, [("x-topic", b"t"), ("x-delay-seconds", b"1")]), service.build_event, NOW
    )
    assert isinstance(decision, Reject)
    assert decision.reason.startswith("invalid_event: body")


NOT_ASCII_DIGITS = ["²", "١٢٣", "１２３", "1_000", "١٢٣.5"]
"""Digits int()/float()/isdigit() accept but a header number must not: other scripts' digits,
superscripts, full-width digits, underscores."""


def _numeric_headers(text: str) -> list[list[tuple[str, bytes | None]]]:
    raw = text.encode()
    return [
        [("x-topic", b"t"), ("x-delay-seconds", raw)],
        [("x-topic", b"t"), ("x-scheduled-at", raw)],
        [*T1, ("x-priority", raw)],
        [*T1, ("x-max-delay-seconds", raw)],
        [("scheduler-epoch", raw), ("scheduler-target-topic", b"t")],
    ]


@pytest.mark.parametrize("text", NOT_ASCII_DIGITS)
def test_time_and_number_headers_take_ascii_digits_only(text: str) -> None:
    for headers in _numeric_headers(text):
        reason = _reason(_msg(b"x", headers, key=b"k"))
        iso_candidate = headers[-1][0] == "x-scheduled-at" and text.isascii()
        code = "invalid_event" if iso_candidate else "invalid_header"  # then: not ISO-8601
        assert reason.startswith(f"{code}: "), (headers, reason)
        named = "scheduled_at" if iso_candidate else headers[-1][0]
        assert named in reason or headers[0][0] in reason, reason


@pytest.mark.parametrize("text", NOT_ASCII_DIGITS)
def test_envelope_times_take_ascii_digits_only(text: str) -> None:
    for name in ("delay_seconds", "scheduled_at"):
        value = orjson.dumps({"topic": "t", name: text})
        reason = _reason(_msg(value, [ENVELOPE]))
        iso_candidate = name == "scheduled_at" and text.isascii()
        code = "invalid_event" if iso_candidate else "invalid_header"  # then: not ISO-8601
        assert reason.startswith(f"{code}: "), reason


def test_ascii_numbers_still_parse() -> None:
    ev = _event(
        _msg(b"x", [("x-topic", b"t"), ("x-delay-seconds", b" 1e-05 "), ("x-priority", b"-3")])
    )
    assert ev.priority == -3
    assert ev.scheduled_at == datetime.fromtimestamp(TS_MS / 1000, UTC) + timedelta(seconds=1e-05)
    ev = _event(_msg(b"x", [("x-topic", b"t"), ("x-scheduled-at", b"1924992000000.5")]))
    assert ev.scheduled_at == datetime.fromtimestamp(1924992000, UTC) + timedelta(microseconds=500)


def test_a_bad_etf1_epoch_names_the_header_and_its_form() -> None:
    reason = _reason(_msg(b"x", [("scheduler-epoch", b"2031-01-01"), *ETF1[1:]], key=b"k"))
    assert reason.startswith("invalid_header: scheduler-epoch: "), reason
    assert "epoch seconds" in reason
    assert "ISO-8601" not in reason

"""Bodies are opaque bytes: validation, the Redis codec, each ingress form's decoding, the HTTP
request model, the JSON view and the CLI's one-line view. No I/O."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from delayline.adapters.kafka_consumer import KafkaMessage
from delayline.adapters.redis_layout import stored_body
from delayline.api.schemas import EventIn
from delayline.cli import readable_body
from delayline.clock import ManualClock
from delayline.domain.codec import decode_event, encode_event
from delayline.domain.events import InvalidEventError, ScheduledEvent, body_view, new_event
from delayline.services.ingress_parse import Decision, Reject, Schedule, parse
from delayline.services.scheduler import SchedulerService

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
BINARY = b"\x00\x02\xff\xfe\x80\xc3\x28\xed\xa0\x80\xf8\x88\x80\x80\x80\n\x00tail\xff"
"""NUL, bytes never valid in UTF-8, a bad continuation, an encoded surrogate, a 5-byte form,
a newline (the codec's separator) and a trailing 0xff."""
ENVELOPE = ("content-type", b"application/vnd.delayline.envelope+json")


def _event(body: object, **fields: object) -> ScheduledEvent:
    return new_event(topic="t", scheduled_at=NOW, body=body, now=NOW, **fields)  # type: ignore[arg-type]


def test_bytes_are_kept_exactly_text_is_its_utf8_and_json_is_encoded() -> None:
    assert _event(BINARY).body == BINARY
    assert _event(bytearray(BINARY)).body == BINARY
    assert _event(memoryview(BINARY)).body == BINARY
    assert _event("héllo").body == "héllo".encode()
    assert _event({"a": [1, "é"]}).body == orjson.dumps({"a": [1, "é"]})
    assert _event(b"").body == b""


def test_the_size_limit_counts_bytes() -> None:
    assert new_event(topic="t", scheduled_at=NOW, body=b"\xff" * 10, max_body_bytes=10).body
    with pytest.raises(InvalidEventError, match="is 11 bytes; the limit is 10"):
        new_event(topic="t", scheduled_at=NOW, body=b"\xff" * 11, max_body_bytes=10)
    with pytest.raises(InvalidEventError, match="is 12 bytes; the limit is 10"):
        new_event(topic="t", scheduled_at=NOW, body="é" * 6, max_body_bytes=10)


@given(body=st.binary(max_size=300), priority=st.integers(-5, 5))
def test_codec_round_trips_any_bytes(body: bytes, priority: int) -> None:
    event = _event(body, priority=priority, headers={"h": "v"}, correlation_id="c")
    assert decode_event(encode_event(event), event.schedule_id) == event


def test_a_text_body_is_stored_exactly_as_before() -> None:
    """The Redis value of a text event is byte for byte what it was when bodies were text:
    the JSON head, a newline, the body's UTF-8 — no base64, no escaping, no marker."""
    body = '{"user_id": 123, "message": "Don\'t forget! ünïcödé"}'
    event = new_event(
        topic="user.notifications",
        entity_type="user",
        action="send_reminder",
        body=body,
        scheduled_at=datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        correlation_id="reminder-123",
        headers={"origin": "billing"},
        priority=1,
        schedule_id="s-1",
        now=datetime(2030, 1, 2, 2, 34, 5, 678901, tzinfo=UTC),
    )
    head = (
        b'{"t":"user.notifications","s":1893553445678901,"d":1800000000,"e":"user",'
        b'"a":"send_reminder","c":"reminder-123","p":1,"h":{"origin":"billing"}}'
    )
    assert encode_event(event) == head + b"\n" + body.encode()
    assert stored_body(event) == encode_event(event)  # the scripts add the member prefix


def test_body_view_shows_text_as_text_and_other_bytes_as_base64() -> None:
    assert body_view("héllo\n".encode()) == ("héllo\n", "utf-8")
    assert body_view(b"") == ("", "utf-8")
    assert body_view(BINARY) == (base64.b64encode(BINARY).decode(), "base64")
    shown = _event(BINARY).to_dict()
    assert (shown["body_encoding"], base64.b64decode(shown["body"])) == ("base64", BINARY)
    assert _event({"a": 1}).to_dict()["body"] == '{"a":1}'


def test_http_model_decodes_base64_bodies() -> None:
    doc = {"topic": "t", "delay_seconds": 1, "body_encoding": "base64"}
    item = EventIn.model_validate({**doc, "body": base64.b64encode(BINARY).decode()})
    fields = item.model_dump(exclude_none=True, exclude={"delay_seconds"})
    assert fields["body"] == BINARY
    assert "body_encoding" not in fields  # not an event field: the route passes the rest on
    text = EventIn.model_validate({"topic": "t", "delay_seconds": 1, "body": "aGk="})
    assert text.body == "aGk="  # utf-8 is the default: a string is its own bytes
    assert EventIn.model_validate({**doc, "body": ""}).body == b""


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("not base64!", "not valid base64"),
        ("aGk", "not valid base64"),  # padding missing
        ({"a": 1}, "must be a base64 string"),
        (["x"], "must be a base64 string"),
    ],
)
def test_http_model_rejects_bad_base64_naming_the_body(body: object, words: str) -> None:
    doc = {"topic": "t", "delay_seconds": 1, "body_encoding": "base64", "body": body}
    with pytest.raises(ValidationError) as info:
        EventIn.model_validate(doc)
    [error] = info.value.errors()
    assert error["loc"] == ("body",)
    assert words in error["msg"]


def test_http_model_rejects_an_unknown_encoding() -> None:
    with pytest.raises(ValidationError) as info:
        EventIn.model_validate({"topic": "t", "delay_seconds": 1, "body_encoding": "hex"})
    assert info.value.errors()[0]["loc"] == ("body_encoding",)


def _parse(
    value: bytes, headers: list[tuple[str, bytes | None]], key: bytes | None = None
) -> Decision:
    msg = KafkaMessage("delayed", 0, 3, key, value, tuple(headers), int(NOW.timestamp() * 1000))
    service = SchedulerService(None, ManualClock(NOW))  # type: ignore[arg-type]
    return parse(msg, service.build_event, NOW)


def test_native_and_etf1_values_are_the_body_byte_for_byte() -> None:
    native = _parse(BINARY, [("x-topic", b"t"), ("x-delay-seconds", b"5")])
    assert isinstance(native, Schedule) and native.event.body == BINARY
    epoch = str(int(NOW.timestamp()) + 60).encode()
    etf1 = _parse(
        BINARY, [("scheduler-epoch", epoch), ("scheduler-target-topic", b"t")], key=b"etf1-k"
    )
    assert isinstance(etf1, Schedule) and etf1.event.body == BINARY
    assert etf1.event.schedule_id == "etf1-k"


def test_envelope_takes_a_base64_body() -> None:
    doc = {"topic": "t", "delay_seconds": 5, "body_encoding": "base64"}
    value = orjson.dumps({**doc, "body": base64.b64encode(BINARY).decode()})
    decision = _parse(value, [ENVELOPE])
    assert isinstance(decision, Schedule) and decision.event.body == BINARY
    plain = _parse(orjson.dumps({"topic": "t", "delay_seconds": 5, "body": "aGk="}), [ENVELOPE])
    assert isinstance(plain, Schedule) and plain.event.body == b"aGk="
    number = _parse(orjson.dumps({"topic": "t", "delay_seconds": 5, "body": 4.5}), [ENVELOPE])
    assert isinstance(number, Schedule) and number.event.body == b"4.5"


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"body_encoding": "base64", "body": "%%%"}, "body is not valid base64"),
        ({"body_encoding": "base64", "body": {"a": 1}}, "must be a base64 string"),
        ({"body_encoding": "hex", "body": "00"}, 'body_encoding must be "utf-8" or "base64"'),
    ],
)
def test_envelope_with_a_bad_base64_body_is_rejected(fields: dict[str, object], words: str) -> None:
    decision = _parse(orjson.dumps({"topic": "t", "delay_seconds": 5, **fields}), [ENVELOPE])
    assert isinstance(decision, Reject)
    assert decision.reason.startswith("invalid_envelope: ")
    assert words in decision.reason


def test_cli_shows_text_quoted_and_binary_as_base64() -> None:
    assert readable_body('{"a": "é"}'.encode()) == '\'{"a": "é"}\''
    assert readable_body(BINARY) == "base64:" + base64.b64encode(BINARY).decode()
    long = readable_body(b"\xff" * 300, limit=8)
    assert long == "base64:////////…"
    assert readable_body("é".encode() * 300, limit=3) == "'ééé'…"

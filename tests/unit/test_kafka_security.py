"""Kafka TLS/SASL settings: the librdkafka options built, and every rule checked at load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from delayline.adapters.kafka_consumer import KafkaDelayedSource
from delayline.adapters.kafka_producer import producer_config
from delayline.settings import Settings, SettingsError, load_settings

SERVERS = "kafka.example:9093"


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


def scram(**overrides: Any) -> Settings:
    return load_settings(
        kafka_bootstrap_servers=SERVERS,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="svc",
        kafka_sasl_password="hunter2-sasl",
        **overrides,
    )


def problems_of(**overrides: Any) -> str:
    with pytest.raises(SettingsError) as caught:
        load_settings(**overrides)
    return str(caught.value)


def test_default_is_plaintext_and_raw_options_pass_through() -> None:
    s = load_settings(kafka_client_options={"client.id": "x"})
    assert s.resolved_kafka_client_options == {"security.protocol": "PLAINTEXT", "client.id": "x"}


def test_sasl_ssl_scram_with_client_certificate(pem: Path, tmp_path: Path) -> None:
    key = tmp_path / "client.key"
    key.write_text("key")
    s = scram(
        kafka_ssl_ca_location=pem,
        kafka_ssl_certificate_location=pem,
        kafka_ssl_key_location=key,
        kafka_ssl_key_password="hunter2-key",
    )
    assert s.resolved_kafka_client_options == {
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": str(pem),
        "ssl.certificate.location": str(pem),
        "ssl.key.location": str(key),
        "ssl.key.password": "hunter2-key",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc",
        "sasl.password": "hunter2-sasl",
    }


def test_oauthbearer_oidc() -> None:
    s = load_settings(
        kafka_bootstrap_servers=SERVERS,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="OAUTHBEARER",
        kafka_sasl_oauthbearer_token_endpoint_url="https://idp.example/token",
        kafka_sasl_oauthbearer_client_id="delayline",
        kafka_sasl_oauthbearer_client_secret="hunter2-oidc",
        kafka_sasl_oauthbearer_scope="kafka",
    )
    assert s.resolved_kafka_client_options == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "OAUTHBEARER",
        "sasl.oauthbearer.method": "oidc",
        "sasl.oauthbearer.token.endpoint.url": "https://idp.example/token",
        "sasl.oauthbearer.client.id": "delayline",
        "sasl.oauthbearer.client.secret": "hunter2-oidc",
        "sasl.oauthbearer.scope": "kafka",
    }


def test_raw_client_options_win_and_may_supply_what_is_required() -> None:
    s = load_settings(
        kafka_bootstrap_servers=SERVERS,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="svc",
        kafka_client_options={"sasl.password": "from-raw", "security.protocol": "SASL_SSL"},
    )
    options = s.resolved_kafka_client_options
    assert options["sasl.password"] == "from-raw"
    assert options["security.protocol"] == "SASL_SSL"


def test_every_client_the_service_builds_gets_the_options() -> None:
    s = scram()
    expected = s.resolved_kafka_client_options
    producer = producer_config(SERVERS, linger_ms=1, lease_seconds=30, extra=expected)
    source = KafkaDelayedSource.from_settings(s, SERVERS)
    for config in (producer, source._consumer_config, source._producer_config):
        assert expected.items() <= config.items()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"kafka_security_protocol": "SSL"},
            "SCHEDULES_KAFKA_SECURITY_PROTOCOL=SSL needs SCHEDULES_KAFKA_BOOTSTRAP_SERVERS",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_ca_location": "/no/such/ca.pem"},
            "SCHEDULES_KAFKA_SSL_CA_LOCATION: no such file: /no/such/ca.pem",
        ),
        (
            {"kafka_ssl_ca_location": "PEM"},
            "SCHEDULES_KAFKA_SSL_CA_LOCATION: used only with SCHEDULES_KAFKA_SECURITY_PROTOCOL "
            "SSL or SASL_SSL (got PLAINTEXT)",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_certificate_location": "PEM"},
            "SCHEDULES_KAFKA_SSL_CERTIFICATE_LOCATION and SCHEDULES_KAFKA_SSL_KEY_LOCATION: "
            "a client certificate needs both",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_key_password": "x"},
            "SCHEDULES_KAFKA_SSL_KEY_PASSWORD: set without SCHEDULES_KAFKA_SSL_KEY_LOCATION",
        ),
        (
            {"kafka_security_protocol": "SASL_SSL"},
            "SCHEDULES_KAFKA_SASL_MECHANISM: required with "
            "SCHEDULES_KAFKA_SECURITY_PROTOCOL=SASL_SSL",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_sasl_mechanism": "PLAIN"},
            "SCHEDULES_KAFKA_SASL_MECHANISM: used only with SCHEDULES_KAFKA_SECURITY_PROTOCOL "
            "SASL_SSL or SASL_PLAINTEXT (got SSL)",
        ),
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "SCRAM-SHA-256"},
            "SCHEDULES_KAFKA_SASL_USERNAME: required with "
            "SCHEDULES_KAFKA_SASL_MECHANISM=SCRAM-SHA-256",
        ),
        (
            {
                "kafka_security_protocol": "SASL_PLAINTEXT",
                "kafka_sasl_mechanism": "PLAIN",
                "kafka_sasl_username": "svc",
            },
            "SCHEDULES_KAFKA_SASL_PASSWORD: required with SCHEDULES_KAFKA_SASL_MECHANISM=PLAIN",
        ),
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "OAUTHBEARER"},
            "SCHEDULES_KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL: required with "
            "SCHEDULES_KAFKA_SASL_MECHANISM=OAUTHBEARER",
        ),
        (
            {
                "kafka_security_protocol": "SASL_SSL",
                "kafka_sasl_mechanism": "OAUTHBEARER",
                "kafka_sasl_oauthbearer_token_endpoint_url": "https://idp.example/token",
                "kafka_sasl_oauthbearer_client_id": "delayline",
            },
            "SCHEDULES_KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET: required with "
            "SCHEDULES_KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL",
        ),
        (
            {"kafka_sasl_username": "svc"},
            "SCHEDULES_KAFKA_SASL_USERNAME: not used with SCHEDULES_KAFKA_SASL_MECHANISM=unset",
        ),
        (
            {"kafka_security_protocol": "TLS"},
            "SCHEDULES_KAFKA_SECURITY_PROTOCOL: Input should be 'PLAINTEXT', 'SSL', "
            "'SASL_PLAINTEXT' or 'SASL_SSL'",
        ),
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "GSSAPI"},
            "SCHEDULES_KAFKA_SASL_MECHANISM: Input should be 'PLAIN', 'SCRAM-SHA-256', "
            "'SCRAM-SHA-512' or 'OAUTHBEARER'",
        ),
    ],
)
def test_each_rule_names_the_setting(
    overrides: dict[str, Any], expected: str, pem: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(pem.parent)
    overrides = {k: ("ca.pem" if v == "PEM" else v) for k, v in overrides.items()}
    if "needs SCHEDULES_KAFKA_BOOTSTRAP_SERVERS" not in expected:
        overrides.setdefault("kafka_bootstrap_servers", SERVERS)
    assert expected in problems_of(**overrides)


def test_oauthbearer_may_come_from_a_raw_unsecured_jwt_config() -> None:
    s = load_settings(
        kafka_bootstrap_servers=SERVERS,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="OAUTHBEARER",
        kafka_client_options={"sasl.oauthbearer.config": "principal=dev"},
    )
    assert s.resolved_kafka_client_options["sasl.oauthbearer.config"] == "principal=dev"


def test_secrets_never_in_repr_or_errors() -> None:
    s = scram()
    assert "hunter2" not in repr(s) and "hunter2" not in str(s)
    message = problems_of(
        kafka_bootstrap_servers=SERVERS,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_password="hunter2-sasl",
        kafka_sasl_oauthbearer_client_secret="hunter2-oidc",
        kafka_ssl_key_password="hunter2-key",
    )
    assert "SCHEDULES_KAFKA_SASL_USERNAME: required" in message
    assert "SCHEDULES_KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET: not used" in message
    assert "hunter2" not in message
    bad_type = problems_of(kafka_sasl_password=["hunter2-list"])
    assert "SCHEDULES_KAFKA_SASL_PASSWORD" in bad_type and "hunter2" not in bad_type


def test_a_raw_security_protocol_is_the_one_the_rules_check() -> None:
    s = load_settings(
        kafka_bootstrap_servers=SERVERS,
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="svc",
        kafka_sasl_password="hunter2-sasl",
        kafka_client_options={"security.protocol": "sasl_ssl"},
    )
    assert s.resolved_kafka_client_options["security.protocol"] == "sasl_ssl"
    message = problems_of(kafka_client_options={"security.protocol": "SSL"})
    assert (
        "SCHEDULES_KAFKA_SECURITY_PROTOCOL=SSL needs SCHEDULES_KAFKA_BOOTSTRAP_SERVERS" in message
    )

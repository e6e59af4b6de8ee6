"""TLS and SASL for every Kafka client, from the ``SCHEDULES_KAFKA_*`` security settings.

One home for the rules and for the librdkafka options they become. Every client the service
builds (consumer, dead-letter producer, firing producer, admin client, ``delayline tail``)
takes :func:`client_options`: these options with the raw ``SCHEDULES_KAFKA_CLIENT_OPTIONS``
merged over them (a raw option wins on a clash). Pure: no I/O but checking that files exist.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from delayline.settings import Settings

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]

_TLS_PROTOCOLS = ("SSL", "SASL_SSL")
_SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")

# setting → librdkafka option, for the settings copied as they are
_TLS_FILES = {
    "kafka_ssl_ca_location": "ssl.ca.location",
    "kafka_ssl_certificate_location": "ssl.certificate.location",
    "kafka_ssl_key_location": "ssl.key.location",
}
_PASSWORD = {"kafka_sasl_username": "sasl.username", "kafka_sasl_password": "sasl.password"}
_RAW_MECHANISM = {"sasl.mechanism", "sasl.mechanisms"}
_OIDC = {
    "kafka_sasl_oauthbearer_token_endpoint_url": "sasl.oauthbearer.token.endpoint.url",
    "kafka_sasl_oauthbearer_client_id": "sasl.oauthbearer.client.id",
    "kafka_sasl_oauthbearer_scope": "sasl.oauthbearer.scope",
}


def security_options(s: Settings) -> dict[str, str]:
    """The librdkafka options for the configured TLS and SASL (secrets in clear: never log)."""
    options: dict[str, str] = {"security.protocol": s.kafka_security_protocol}
    for field, option in _TLS_FILES.items():
        path: Path | None = getattr(s, field)
        if path is not None:
            options[option] = str(path)
    if s.kafka_ssl_key_password is not None:
        options["ssl.key.password"] = s.kafka_ssl_key_password.get_secret_value()
    if s.kafka_sasl_mechanism is not None:
        options["sasl.mechanism"] = s.kafka_sasl_mechanism
    if s.kafka_sasl_username is not None:
        options["sasl.username"] = s.kafka_sasl_username
    if s.kafka_sasl_password is not None:
        options["sasl.password"] = s.kafka_sasl_password.get_secret_value()
    if s.kafka_sasl_oauthbearer_token_endpoint_url is not None:
        options["sasl.oauthbearer.method"] = "oidc"
        for field, option in _OIDC.items():
            value: str | None = getattr(s, field)
            if value is not None:
                options[option] = value
        if s.kafka_sasl_oauthbearer_client_secret is not None:
            secret = s.kafka_sasl_oauthbearer_client_secret.get_secret_value()
            options["sasl.oauthbearer.client.secret"] = secret
    return options


def client_options(s: Settings) -> dict[str, str]:
    """Options for every Kafka client: the security options under the raw client options."""
    return {**security_options(s), **s.kafka_client_options}


def security_problems(s: Settings, env_prefix: str) -> list[str]:
    """What is wrong with the security settings, each naming its variable (empty: all good)."""

    def name(field: str) -> str:
        return env_prefix + field.upper()

    problems: list[str] = []
    protocol = _effective_protocol(s)
    if protocol != "PLAINTEXT" and s.kafka_bootstrap_servers is None:
        problems.append(
            f"{name('kafka_security_protocol')}={protocol} needs "
            f"{name('kafka_bootstrap_servers')}: the embedded broker listens in plaintext"
        )
    return problems + _tls_problems(s, name) + _sasl_problems(s, name)


def _effective_protocol(s: Settings) -> str:
    """The protocol the clients will use: a raw ``security.protocol`` option wins."""
    return s.kafka_client_options.get("security.protocol", s.kafka_security_protocol).upper()


def _tls_problems(s: Settings, name: Callable[[str], str]) -> list[str]:
    problems: list[str] = []
    protocol = _effective_protocol(s)
    for field in [*_TLS_FILES, "kafka_ssl_key_password"]:
        if getattr(s, field) is not None and protocol not in _TLS_PROTOCOLS:
            problems.append(
                f"{name(field)}: used only with {name('kafka_security_protocol')} "
                f"SSL or SASL_SSL (got {protocol})"
            )
    for field in _TLS_FILES:
        path: Path | None = getattr(s, field)
        if path is not None and not path.is_file():
            problems.append(f"{name(field)}: no such file: {path}")
    if (s.kafka_ssl_certificate_location is None) != (s.kafka_ssl_key_location is None):
        problems.append(
            f"{name('kafka_ssl_certificate_location')} and {name('kafka_ssl_key_location')}: "
            "a client certificate needs both"
        )
    if s.kafka_ssl_key_password is not None and s.kafka_ssl_key_location is None:
        problems.append(
            f"{name('kafka_ssl_key_password')}: set without {name('kafka_ssl_key_location')}"
        )
    return problems


def _sasl_problems(s: Settings, name: Callable[[str], str]) -> list[str]:
    problems: list[str] = []
    protocol, mechanism, raw = (
        _effective_protocol(s),
        s.kafka_sasl_mechanism,
        s.kafka_client_options,
    )
    if protocol in _SASL_PROTOCOLS and mechanism is None and not _RAW_MECHANISM & raw.keys():
        problems.append(
            f"{name('kafka_sasl_mechanism')}: required with "
            f"{name('kafka_security_protocol')}={protocol} "
            "(PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER)"
        )
    if mechanism is not None and protocol not in _SASL_PROTOCOLS:
        problems.append(
            f"{name('kafka_sasl_mechanism')}: used only with "
            f"{name('kafka_security_protocol')} SASL_SSL or SASL_PLAINTEXT (got {protocol})"
        )
    oidc_fields = [*_OIDC, "kafka_sasl_oauthbearer_client_secret"]
    if mechanism == "OAUTHBEARER":
        if s.kafka_sasl_oauthbearer_token_endpoint_url is not None:
            problems += [
                f"{name(field)}: required with {name('kafka_sasl_oauthbearer_token_endpoint_url')}"
                for field in (
                    "kafka_sasl_oauthbearer_client_id",
                    "kafka_sasl_oauthbearer_client_secret",
                )
                if getattr(s, field) is None
            ]
        elif "sasl.oauthbearer.config" not in raw:
            problems.append(
                f"{name('kafka_sasl_oauthbearer_token_endpoint_url')}: required with "
                f"{name('kafka_sasl_mechanism')}=OAUTHBEARER (or sasl.oauthbearer.config in "
                f"{name('kafka_client_options')})"
            )
        unused = list(_PASSWORD)
    elif mechanism is not None:  # PLAIN or SCRAM
        problems += [
            f"{name(field)}: required with {name('kafka_sasl_mechanism')}={mechanism}"
            for field, option in _PASSWORD.items()
            if getattr(s, field) is None and option not in raw
        ]
        unused = oidc_fields
    else:
        unused = [*_PASSWORD, *oidc_fields]
    problems += [
        f"{name(field)}: not used with {name('kafka_sasl_mechanism')}={mechanism or 'unset'}"
        for field in unused
        if getattr(s, field) is not None
    ]
    return problems

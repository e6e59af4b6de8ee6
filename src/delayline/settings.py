"""Settings, read once from the environment (prefix ``SCHEDULES_``) by the composition root.

Names are matched case-insensitively: ``schedules_IMMEDIATE_HORIZON_SECONDS`` works too.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from delayline.adapters.encryption import KeyRing, KeyRingError, parse_key_ring
from delayline.api.keys import ApiKeyEntry, check_unique_ids
from delayline.domain.events import DEFAULT_MAX_MESSAGE_BYTES, EventRules
from delayline.kafka_security import (
    SaslMechanism,
    SecurityProtocol,
    client_options,
    security_problems,
)
from delayline.roles import ALL_ROLES, Role, parse_roles

ENV_PREFIX = "SCHEDULES_"


class SettingsError(ValueError):
    """Raised when a setting is invalid; the message names each variable and what is wrong."""


def _default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    """Every tunable of the service. Defaults run everything embedded on loopback."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        extra="ignore",
        frozen=True,
    )

    # --- horizons, sync, cleanup, analytics --------------------------------------------------
    immediate_horizon_seconds: int = Field(86400, gt=0)
    """Events due within this many seconds go to Redis; later ones to ClickHouse."""
    transfer_horizon_seconds: int = Field(3600, gt=0)
    """The sync moves ClickHouse events due within this many seconds into Redis."""
    clickhouse_sync_interval: float = Field(300, gt=0)
    """Seconds between two runs of the ClickHouse → Redis sync."""
    redis_processing_interval: float = Field(5, gt=0, le=3600)
    """The longest the dispatcher ever sleeps (it wakes earlier for due events)."""
    execution_history_ttl_days: int = Field(90, gt=0)
    cleanup_interval: float = Field(3600, gt=0)
    """Seconds between two cleanups of finished schedules and Redis orphans."""
    analytics_enabled: bool = True
    analytics_batch_size: int = Field(1000, gt=0, le=1_000_000)
    analytics_flush_interval: float = Field(1.0, gt=0)

    # --- connections ---------------------------------------------------------------------------
    data_dir: Path = Path(".delayline")
    """Embedded servers keep their data here (Valkey AOF, chDB folder)."""
    redis_url: SecretStr | None = None
    """Unset: an embedded Valkey server is started in ``data_dir``. ``redis://`` one server,
    ``redis+cluster://`` a Redis Cluster (a comma list of such URLs: several of its nodes to
    start from), or a comma list of servers (shard k on server k mod M)."""
    redis_key_prefix: str = Field("delayline", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    """Shard k's keys live under the hash tag ``{<prefix>:k}`` (``{<prefix>}`` with one shard)."""
    redis_shards: int = Field(1, ge=1, le=4096)
    """Virtual shards of the near-term tier; recorded at first start, changed only by
    ``delayline reshard --to N``."""
    redis_appendfsync: Literal["always", "everysec", "no"] = "everysec"
    """AOF fsync policy of the embedded Valkey (``always``: no acknowledged event is lost)."""
    redis_max_connections: int = Field(100, gt=0, le=10_000)
    """Connections the API and ingress share; a request finding all in use waits for one."""
    redis_pool_timeout: float = Field(5.0, gt=0)
    """The longest a request waits for a free connection before a 503 ``redis is busy``."""
    redis_command_timeout: float = Field(5.0, gt=0)
    """The longest an API or ingress command waits for Redis's answer; past it the outcome is
    unknown (HTTP 504: retry with the same schedule_id). The firing path has no such limit."""
    clickhouse_dsn: SecretStr | None = None
    """Unset: ``chdb:///<data_dir>/clickhouse`` (the engine in-process)."""
    clickhouse_database: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    """Database for the tables (default: the DSN's path for http(s), else ``delayline``)."""
    clickhouse_cluster: str = Field("", pattern=r"^([A-Za-z_][A-Za-z0-9_]{0,63})?$")
    """The ClickHouse cluster (a ``remote_servers`` name) the tables live on: migrations then
    create replicated local tables and ``Distributed`` tables over them. Empty: one server."""
    kafka_bootstrap_servers: str | None = None
    """Unset: an embedded Tansu broker is started on loopback."""
    kafka_client_options: dict[str, str] = Field(default_factory=dict)
    """Extra librdkafka options (JSON object), e.g. security settings."""
    kafka_linger_ms: float = Field(1.0, ge=0, le=1000)
    kafka_delayed_topic_name: str = "delayed_events"
    kafka_dead_letter_topic_name: str = "delayed_events.dlq"
    kafka_topic_partitions: int = Field(4, ge=1, le=10_000)
    """Partitions of the delayed-events and dead-letter topics when Delayline creates them."""
    kafka_topic_replication_factor: int = Field(-1, ge=-1, le=32)
    """Replicas of those topics when Delayline creates them (-1: the broker's default)."""
    kafka_consumer_group: str = "delayline-delayed-events"
    kafka_session_timeout_ms: int = Field(6000, ge=1000)
    # TLS and SASL for every Kafka client (rules and librdkafka names: kafka_security.py)
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_ssl_ca_location: Path | None = None
    """CA bundle to verify the brokers (unset: the system's CAs)."""
    kafka_ssl_certificate_location: Path | None = None
    kafka_ssl_key_location: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None
    kafka_sasl_mechanism: SaslMechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_sasl_oauthbearer_token_endpoint_url: str | None = None
    """OAUTHBEARER through OIDC client credentials (librdkafka fetches and refreshes the token)."""
    kafka_sasl_oauthbearer_client_id: str | None = None
    kafka_sasl_oauthbearer_client_secret: SecretStr | None = None
    kafka_sasl_oauthbearer_scope: str | None = None

    # --- event validation ----------------------------------------------------------------------
    max_body_bytes: int = Field(1024 * 1024, gt=0)
    default_max_delay_seconds: int = Field(86400, ge=0)
    allowed_topics: list[str] = Field(default_factory=list)
    """When set (JSON list of glob patterns, ``["user.*"]``), events may target only these."""

    # --- dispatcher ----------------------------------------------------------------------------
    firing_runtime: Literal["process", "thread"] = "thread"
    """Where the dispatcher runs: its own event-loop thread in the service's process, or its
    own process (no request handling shares its GIL)."""
    workers: int = Field(1, ge=1, le=256)
    """Firing worker processes of ``delayline serve`` (``--workers``). 1: the dispatcher runs as
    ``firing_runtime`` says. N ≥ 2: N processes fire, each owning its share of the
    ``redis_shards`` shards (N may not exceed them), while this process serves the API, ingress,
    sync and analytics."""
    claim_batch_size: int = Field(2000, gt=0, le=10_000)
    """The largest claim. Each claim asks for twice what the last one got, at least
    ``claim_batch_min_size`` and at most this: small claims when idle, large under a backlog."""
    claim_batch_min_size: int = Field(100, gt=0, le=10_000)
    max_inflight_batches: int = Field(16, gt=0)
    lease_seconds: float = Field(30, gt=0)
    """A claimed event not acknowledged within this time is given to another node."""
    claim_lookahead_seconds: float = Field(0.02, ge=0, le=1)
    """Claim this long before due, publish at the due time: hides the claim's round trip
    (its round trip under load: BENCHMARKS.md, precision). An event claimed ahead is firing and can
    no longer be cancelled."""
    max_publish_attempts: int = Field(5, gt=0)
    retry_backoff_initial: float = Field(0.5, gt=0)
    retry_backoff_max: float = Field(60, gt=0)
    result_ttl_seconds: int = Field(3600, ge=0)
    """How long Redis remembers the outcome of a fired event (0: not at all)."""
    shutdown_timeout: float = Field(10, gt=0)

    # --- HTTP ----------------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=0, le=65535)
    api_keys: list[ApiKeyEntry] = Field(default_factory=list)
    """JSON list of ``{"id", "tenant", "scopes", "sha256"}`` (``delayline api-key create``
    prints one). When set, every endpoint but the open ones needs one of these keys in
    ``X-API-Key`` or as a bearer token. Only hashes: the keys themselves are never stored."""
    api_allow_unauthenticated: bool = False
    """Serve a non-loopback ``api_host`` without ``api_keys`` (refused unless set)."""
    api_open_health: bool = True
    api_open_metrics: bool = True
    api_max_request_bytes: int = Field(16 * 1024 * 1024, gt=0)
    """A request body over this is refused (413) before it is read."""
    api_max_connections: int = Field(1000, gt=0)
    """Open connections (and requests in flight) beyond this are answered 503 and closed."""
    api_header_timeout: float = Field(10, gt=0)
    """A connection that has not sent a complete request head within this is closed."""
    api_body_timeout: float = Field(30, gt=0)
    """A request whose body has not arrived within this is answered 408 and closed."""
    api_keep_alive_timeout: int = Field(5, gt=0)
    """An idle keep-alive connection is closed after this."""

    # --- encryption at rest ------------------------------------------------------------------
    encryption_keys: SecretStr | None = None
    """The key ring (JSON, or the path of a JSON file): ``{"current": "k2", "keys": {"k1":
    "<base64 of 32 bytes>", "k2": "…"}}``. Set: bodies and headers are sealed with AES-GCM in
    Redis and ClickHouse. Unset: stored in clear."""
    encryption_tenant_keys: dict[str, str] = Field(default_factory=dict)
    """``{"<entity_type>": "<key id>"}``: events of that entity type are sealed with that key."""

    node_id: str = Field(default_factory=_default_node_id)
    roles: Annotated[frozenset[Role], NoDecode] = ALL_ROLES
    """What this process runs: a comma list of ``schedule``, ``fire``, ``sync``, ``api``,
    ``ingest``, or ``all`` (see ``delayline.roles``)."""

    @field_validator("roles", mode="before")
    @classmethod
    def _parse_roles(cls, value: object) -> object:
        if isinstance(value, str | set | frozenset | list | tuple):
            return parse_roles(value)
        return value

    @field_validator("kafka_topic_replication_factor")
    @classmethod
    def _check_replication_factor(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be -1 (the broker's default) or at least 1")
        return value

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, value: list[ApiKeyEntry]) -> list[ApiKeyEntry]:
        return check_unique_ids(value)

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        if self.transfer_horizon_seconds <= self.clickhouse_sync_interval:
            raise ValueError(
                f"{ENV_PREFIX}TRANSFER_HORIZON_SECONDS ({self.transfer_horizon_seconds}) must be "
                f"larger than {ENV_PREFIX}CLICKHOUSE_SYNC_INTERVAL "
                f"({self.clickhouse_sync_interval}), or events would fire late"
            )
        if self.transfer_horizon_seconds > self.immediate_horizon_seconds:
            raise ValueError(
                f"{ENV_PREFIX}TRANSFER_HORIZON_SECONDS ({self.transfer_horizon_seconds}) must not "
                f"exceed {ENV_PREFIX}IMMEDIATE_HORIZON_SECONDS ({self.immediate_horizon_seconds})"
            )
        limit = self.kafka_client_options.get("message.max.bytes", "1")
        if not str(limit).isdigit() or int(limit) < 1:
            raise ValueError(
                f"{ENV_PREFIX}KAFKA_CLIENT_OPTIONS: message.max.bytes must be a positive integer"
            )
        if (
            not self.api_keys
            and not self.api_allow_unauthenticated
            and not is_loopback(self.api_host)
        ):
            raise ValueError(
                f"{ENV_PREFIX}API_HOST={self.api_host} is reachable from the network but "
                f"{ENV_PREFIX}API_KEYS is empty: set API keys, bind 127.0.0.1, or set "
                f"{ENV_PREFIX}API_ALLOW_UNAUTHENTICATED=true to serve it open on purpose"
            )
        return self

    @model_validator(mode="after")
    def _check_kafka_security(self) -> Settings:
        problems = security_problems(self, ENV_PREFIX)
        if problems:
            raise ValueError("\n  ".join(problems))
        return self

    @property
    def resolved_kafka_client_options(self) -> dict[str, str]:
        """librdkafka options for every Kafka client: TLS/SASL under the raw client options."""
        return client_options(self)

    def event_rules(self) -> EventRules:
        """The rules every ingress applies: the producer's record limit and the topics events
        may target."""
        limit = self.kafka_client_options.get("message.max.bytes")
        return EventRules(
            max_message_bytes=int(limit) if limit else DEFAULT_MAX_MESSAGE_BYTES,
            own_topics=frozenset(
                {self.kafka_delayed_topic_name, self.kafka_dead_letter_topic_name}
            ),
            allowed_topics=tuple(self.allowed_topics),
        )

    @model_validator(mode="after")
    def _check_key_ring(self) -> Settings:
        if self.encryption_tenant_keys and self.encryption_keys is None:
            raise ValueError(
                f"{ENV_PREFIX}ENCRYPTION_TENANT_KEYS needs {ENV_PREFIX}ENCRYPTION_KEYS"
            )
        self.key_ring()
        return self

    def key_ring(self) -> KeyRing | None:
        """The encryption key ring, or None when encryption at rest is off."""
        if self.encryption_keys is None:
            return None
        try:
            return parse_key_ring(
                self.encryption_keys.get_secret_value(), self.encryption_tenant_keys
            )
        except KeyRingError as exc:
            raise ValueError(f"{ENV_PREFIX}ENCRYPTION_KEYS: {exc}") from None

    @property
    def resolved_clickhouse_dsn(self) -> str:
        """The DSN in use: the configured one, or the embedded chDB folder."""
        if self.clickhouse_dsn is not None:
            return self.clickhouse_dsn.get_secret_value()
        return f"chdb:///{(self.data_dir / 'clickhouse').resolve().as_posix().lstrip('/')}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only accepts connections from this
    machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_SECRET_FIELDS = frozenset(
    {
        "redis_url",
        "clickhouse_dsn",
        "api_keys",
        "kafka_client_options",
        "kafka_ssl_key_password",
        "kafka_sasl_password",
        "kafka_sasl_oauthbearer_client_secret",
        "encryption_keys",
    }
)


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; raise :class:`SettingsError` naming bad variables."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except SourceError as exc:  # a complex value (list, dict) that is not valid JSON
        match = re.search(r'field "([a-z_]+)"', str(exc))
        name = ENV_PREFIX + (match.group(1).upper() if match else "?")
        raise SettingsError(f"invalid settings:\n  {name}: must be valid JSON") from None
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ENV_PREFIX + "_".join(str(p) for p in err["loc"]).upper()
            if len(err["loc"]) > 1 and err["loc"][0] == "api_keys":  # an entry of the list
                index, *inner = err["loc"][1:]
                name = f"{ENV_PREFIX}API_KEYS[{index}]" + "".join(f".{p}" for p in inner)
            if not err["loc"]:
                problems.append(str(err["msg"]).removeprefix("Value error, "))
            elif str(err["loc"][0]) in _SECRET_FIELDS:
                problems.append(f"{name}: {str(err['msg']).removeprefix('Value error, ')}")
            else:
                problems.append(f"{name}: {err['msg']} (got {err.get('input')!r})")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems)) from None

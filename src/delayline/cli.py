"""The ``delayline`` command: serve, migrate, and talk to a running service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
import time
from datetime import datetime
from typing import Annotated, Any

import httpx
import orjson
import typer
from rich.console import Console

from delayline.adapters.embedded import EmbeddedValkey
from delayline.adapters.redis_connect import redis_servers
from delayline.adapters.redis_reshard import ReshardRefused, move_to_shards, recorded_shards
from delayline.adapters.runtime_dir import data_dir_lock
from delayline.api.keys import KEY_PREFIX, ApiKeyEntry, hash_key, new_key, parse_scopes
from delayline.bootstrap import DataDirInUseError, read_runtime_file
from delayline.domain.events import body_view, new_schedule_id
from delayline.domain.limits import due_after
from delayline.domain.tenancy import DEFAULT_TENANT, check_tenant
from delayline.settings import Settings, SettingsError, load_settings

app = typer.Typer(help="Delayline: delayed events fired to Kafka on time.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
SCHEDULE_ATTEMPTS = 4
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(text: str) -> float:
    """``30s``, ``1.5m``, ``250ms``, ``2h``, ``3d`` or plain seconds → seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise typer.BadParameter(f"{text!r} is not a duration like 30s, 5m, 250ms, 2h or 1d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _api(settings: Settings, api_url: str | None, api_key: str | None) -> httpx.Client:
    base = api_url or f"http://{settings.api_host}:{settings.api_port}"
    key = api_key or os.environ.get("DELAYLINE_API_KEY")
    headers = {"X-API-Key": key} if key else {}
    return httpx.Client(base_url=base, headers=headers, timeout=30)


RETRIED_STATUSES = frozenset({503, 504})
"""Answers meaning "not stored" (503) or "maybe stored" (504): a request that is safe to repeat
(idempotent, like a schedule with its own id) is sent again."""


def _call(client: httpx.Client, method: str, path: str, *, attempts: int = 1, **kwargs: Any) -> Any:
    """Send the request (``attempts`` times at most while it times out or answers 503/504)."""
    for attempt in range(1, attempts + 1):
        try:
            response = client.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            if attempt < attempts:
                time.sleep(min(2.0**attempt, 10))
                continue
            err.print(f"[red]no answer from {client.base_url} ({exc}); retry: it is safe[/red]")
            raise typer.Exit(1) from None
        except httpx.HTTPError as exc:
            err.print(f"[red]cannot reach the service at {client.base_url}: {exc}[/red]")
            err.print("Is `delayline serve` (or `make run`) running?")
            raise typer.Exit(1) from None
        if response.status_code in RETRIED_STATUSES and attempt < attempts:
            time.sleep(min(2.0**attempt, 10))
            continue
        break
    if response.status_code >= 400:
        err.print(f"[red]{response.status_code}: {response.text}[/red]")
        raise typer.Exit(1)
    return response.json() if response.content else None


ApiUrl = Annotated[str | None, typer.Option(help="Base URL of the service's HTTP API.")]
ApiKey = Annotated[str | None, typer.Option(help="API key (default: $DELAYLINE_API_KEY).")]


@app.command()
def serve(
    no_migrate: Annotated[bool, typer.Option(help="Do not run migrations at start.")] = False,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO",
    roles: Annotated[
        str | None,
        typer.Option(
            help="What this process runs: a comma list of schedule, fire, sync, api, ingest, "
            "or all (default: $SCHEDULES_ROLES, else all)."
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=256,
            help="Firing worker processes, each owning its share of the shards (default: "
            "$SCHEDULES_WORKERS, else 1: the dispatcher fires from a thread of this process).",
        ),
    ] = None,
) -> None:
    """Run the loops of this process's roles until SIGINT/SIGTERM, then drain gracefully."""
    from delayline.bootstrap import Application
    from delayline.roles import parse_roles

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = _settings()
    try:
        chosen = parse_roles(roles) if roles is not None else None
    except ValueError as exc:
        err.print(f"[red]--roles: {exc}[/red]")
        raise typer.Exit(2) from None
    if workers is not None:
        settings = settings.model_copy(update={"workers": workers})
    try:
        application = Application(settings, roles=chosen, migrate=not no_migrate)
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    try:
        asyncio.run(application.serve_forever())
    except Exception as exc:  # start-up failures: one clear line, not a trace
        err.print(f"[red]delayline could not start: {exc}[/red]")
        raise typer.Exit(1) from None


@app.command()
def migrate() -> None:
    """Apply the ClickHouse migrations (idempotent), showing progress."""
    from delayline.bootstrap import run_migrations_cli

    settings = _settings()
    try:
        applied = asyncio.run(run_migrations_cli(settings, progress=console.print))
    except Exception as exc:
        err.print(f"[red]migration failed: {exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"{len(applied)} migration(s) applied" if applied else "schema is up to date")


@app.command()
def schedule(
    topic: Annotated[str, typer.Argument(help="Kafka topic to fire to.")],
    body: Annotated[str, typer.Argument(help="Message body.")] = "",
    in_: Annotated[str | None, typer.Option("--in", help="Delay, e.g. 30s, 5m, 2h.")] = None,
    at: Annotated[str | None, typer.Option(help="Absolute time, ISO-8601 (UTC if naive).")] = None,
    entity_type: Annotated[str, typer.Option(help="Entity type.")] = "",
    action: Annotated[str, typer.Option(help="Action.")] = "",
    correlation_id: Annotated[str | None, typer.Option(help="Correlation id (the key).")] = None,
    header: Annotated[list[str] | None, typer.Option(help="Header k=v (repeatable).")] = None,
    priority: Annotated[int, typer.Option(help="Higher fires first among equals.")] = 0,
    max_delay: Annotated[int | None, typer.Option(help="max_delay_seconds.")] = None,
    schedule_id: Annotated[
        str | None, typer.Option("--id", help="Schedule id (default: a new one).")
    ] = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Schedule one event through the running service; prints its schedule id.

    The command always sends a schedule id (``--id``, or a new one), so its own retries after a
    timeout or a 503/504 can never create a second event.
    """
    if (in_ is None) == (at is None):
        raise typer.BadParameter("give exactly one of --in or --at")
    headers = {}
    for item in header or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"header {item!r} is not k=v")
        headers[key] = value
    when = at
    if in_ is not None:
        try:
            when = due_after(datetime.now().astimezone(), parse_duration(in_)).isoformat()
        except ValueError as exc:
            raise typer.BadParameter(f"--in: {exc}") from None
    payload = {
        "topic": topic,
        "body": body,
        "scheduled_at": when,
        "entity_type": entity_type,
        "action": action,
        "correlation_id": correlation_id,
        "headers": headers,
        "priority": priority,
        "max_delay_seconds": max_delay,
        "schedule_id": schedule_id or new_schedule_id(),
    }
    payload = {k: v for k, v in payload.items() if v is not None}
    with _api(_settings(), api_url, api_key) as client:
        result = _call(
            client, "POST", "/api/v1/schedules", attempts=SCHEDULE_ATTEMPTS, json=payload
        )
    print(result["schedule_id"])


@app.command()
def cancel(
    schedule_id: Annotated[str | None, typer.Argument(help="The schedule id.")] = None,
    correlation_id: Annotated[
        str | None, typer.Option(help="Cancel every pending event with this correlation id.")
    ] = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Cancel a pending event, or every pending event with a correlation id."""
    if (schedule_id is None) == (correlation_id is None):
        err.print("[red]give a schedule id or --correlation-id (one of the two)[/red]")
        raise typer.Exit(2)
    with _api(_settings(), api_url, api_key) as client:
        if correlation_id is not None:
            result = _call(
                client, "DELETE", "/api/v1/schedules", params={"correlation_id": correlation_id}
            )
            console.print(
                f"cancelled {result['total']} "
                f"(redis {result['redis']}, clickhouse {result['clickhouse']})"
            )
            return
        _call(client, "DELETE", f"/api/v1/schedules/{schedule_id}")
    console.print(f"cancelled {schedule_id}")


@app.command("list")
def list_events(
    correlation_id: Annotated[str | None, typer.Option(help="Business key.")] = None,
    entity_type: Annotated[str | None, typer.Option()] = None,
    action: Annotated[str | None, typer.Option()] = None,
    topic: Annotated[str | None, typer.Option()] = None,
    status: Annotated[list[str] | None, typer.Option(help="Repeat for several.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 100,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """List events by business key, in either tier: id, status, due time, topic."""
    params: dict[str, Any] = {
        "correlation_id": correlation_id,
        "entity_type": entity_type,
        "action": action,
        "topic": topic,
        "status": status or None,
    }
    params = {k: v for k, v in params.items() if v is not None}
    shown = 0
    cursor = ""
    with _api(_settings(), api_url, api_key) as client:
        while shown < limit:
            page_size = min(1000, limit - shown)
            page = _call(
                client,
                "GET",
                "/api/v1/schedules",
                params={**params, "limit": page_size, "cursor": cursor},
            )
            for event in page["events"]:
                print(
                    f"{event['schedule_id']}\t{event['status']}\t{event['scheduled_at']}\t"
                    f"{event['topic']}\t{event['correlation_id']}"
                )
            shown += len(page["events"])
            if page["next_cursor"] is None:
                break
            cursor = page["next_cursor"]


@app.command()
def show(
    schedule_id: Annotated[str, typer.Argument(help="The schedule id.")],
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Print an event's record and its history (every transition)."""
    with _api(_settings(), api_url, api_key) as client:
        event = _call(client, "GET", f"/api/v1/schedules/{schedule_id}")
        history = client.get(f"/api/v1/schedules/{schedule_id}/history")
    console.print_json(orjson.dumps(event).decode())
    transitions = history.json()["transitions"] if history.status_code == 200 else []
    for step in transitions:
        where = ""
        if step.get("kafka_partition") is not None:
            where = f" partition {step['kafka_partition']} offset {step['kafka_offset']}"
        detail = f" {step['detail']}" if step["detail"] else ""
        node = f" on {step['node']}" if step["node"] else ""
        print(f"{step['at']}  {step['transition']}{node}{detail}{where}")


@app.command()
def stats(api_url: ApiUrl = None, api_key: ApiKey = None) -> None:
    """Print the service's statistics, and the holder of each shard's lease."""
    with _api(_settings(), api_url, api_key) as client:
        result = _call(client, "GET", "/api/v1/schedules/monitoring/stats")
        health: Any = None
        with contextlib.suppress(httpx.HTTPError, ValueError):  # the stats stand on their own
            health = client.get("/api/v1/schedules/monitoring/health").json()
    if isinstance(health, dict) and "shards" in health:
        result["shards"] = health["shards"]
    console.print_json(orjson.dumps(result).decode())


@app.command()
def reshard(
    to: Annotated[int, typer.Option("--to", min=1, max=4096, help="The new shard count.")],
) -> None:
    """Move every pending event, remembered outcome and parked payload to its shard under
    TO shards (set SCHEDULES_REDIS_SHARDS to TO afterwards). Offline: refused while a node
    runs. Safe to run again if interrupted."""
    settings = _settings()
    try:
        moved = asyncio.run(_reshard(settings, to))
    except (ReshardRefused, DataDirInUseError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"resharded to {to} shard(s); {moved} pending event(s) moved")


async def _reshard(settings: Settings, to: int) -> int:
    with contextlib.ExitStack() as stack:
        if settings.redis_url is None:  # the embedded server, started here on its data
            stack.enter_context(data_dir_lock(settings.data_dir))
            valkey = EmbeddedValkey(settings.data_dir / "valkey", appendfsync="always")
            url = await asyncio.to_thread(valkey.start)
            stack.callback(valkey.stop)
        else:
            url = settings.redis_url.get_secret_value()
        servers = redis_servers(url, max_connections=4, pool_timeout=30)
        try:
            before = await recorded_shards(servers, settings.redis_key_prefix)
            console.print(f"{before} shard(s) recorded; moving to {to}")
            return await move_to_shards(
                servers,
                settings.redis_key_prefix,
                to,
                result_ttl_seconds=settings.result_ttl_seconds,
                progress=lambda moved, shard: console.print(f"  shard {shard}: {moved} moved"),
            )
        finally:
            await servers.aclose()


@app.command("rotate-keys")
def rotate_keys(
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    interval: Annotated[float, typer.Option(help="Seconds between progress lines.")] = 1.0,
) -> None:
    """Re-seal every stored body and headers with the current keys, in the running service's
    background, printing progress until it ends (the service keeps scheduling and firing)."""
    path = "/api/v1/schedules/monitoring/rotate-keys"
    with _api(_settings(), api_url, api_key) as client:
        status = _call(client, "POST", path)
        console.print(f"rotating to key {status['key_id']} (started {status['state']})")
        while True:
            for name, tier in status["tiers"].items():
                console.print(
                    f"  {name}: scanned {tier['scanned']}, re-sealed {tier['rekeyed']}, "
                    f"restored {tier['restored']}, unreadable {tier['unreadable']}"
                    + (" (done)" if tier["done"] else "")
                )
            if status["state"] != "running":
                break
            time.sleep(interval)
            status = _call(client, "GET", path)
    if status["state"] == "failed":
        err.print(f"[red]key rotation failed: {status['error']}[/red]")
        raise typer.Exit(1)
    unreadable = sum(t["unreadable"] for t in status["tiers"].values())
    console.print(
        f"key rotation done; {unreadable} payload(s) unreadable with this ring"
        if unreadable
        else "key rotation done"
    )


@app.command()
def tail(
    topic: Annotated[str, typer.Argument(help="Topic to watch.")],
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers.")] = None,
    from_beginning: Annotated[bool, typer.Option(help="Also print earlier messages.")] = False,
) -> None:
    """Print events as they fire, with their lateness (from the message's produce time)."""
    from confluent_kafka import Consumer

    settings = _settings()
    servers = (
        bootstrap
        or settings.kafka_bootstrap_servers
        or read_runtime_file(settings.data_dir).get("bootstrap_servers")
    )
    if not servers:
        err.print("[red]no broker: set SCHEDULES_KAFKA_BOOTSTRAP_SERVERS or run `delayline serve`")
        raise typer.Exit(1)
    from delayline.adapters.kafka_topics import KafkaTopics

    KafkaTopics(  # so the first event is seen
        servers,
        [topic],
        partitions=settings.kafka_topic_partitions,
        replication_factor=settings.kafka_topic_replication_factor,
        client_options=settings.resolved_kafka_client_options,
    ).ensure()
    consumer = Consumer(
        {
            **settings.resolved_kafka_client_options,
            "bootstrap.servers": servers,
            "topic.metadata.refresh.interval.ms": 2000,
            "group.id": f"delayline-tail-{os.getpid()}",
            # Read from the start and skip what came before us: the embedded broker answers
            # "latest" offsets wrongly.
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    started_ms = 0 if from_beginning else int(time.time() * 1000)
    print(f"watching {topic} on {servers} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() or msg.timestamp()[1] < started_ms:
                continue
            _print_fired(msg, time.time())
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()


def _print_fired(msg: Any, read_at: float) -> None:
    headers = {k: (v or b"").decode(errors="replace") for k, v in msg.headers() or []}
    due = headers.get("x-scheduled-at")
    produced_ms = msg.timestamp()[1]
    late = ""
    if due:
        due_s = datetime.fromisoformat(due).timestamp()
        late = f"fired {produced_ms / 1000 - due_s:+.3f}s  read {read_at - due_s:+.3f}s"
    print(  # plain print: no markup interpretation of message contents, easy to grep
        f"{datetime.fromtimestamp(read_at).isoformat(timespec='milliseconds')}  "
        f"{headers.get('x-schedule-id', '?')}  {late}  key={msg.key()!r}  "
        f"{readable_body(msg.value() or b'')}",
        flush=True,
    )


api_key_app = typer.Typer(help="API keys: make a new one.", no_args_is_help=True)
app.add_typer(api_key_app, name="api-key")


@api_key_app.command("create")
def api_key_create(
    tenant: Annotated[str, typer.Option(help="The tenant the key acts for.")] = DEFAULT_TENANT,
    scopes: Annotated[
        str, typer.Option(help="Comma-separated: read, schedule, admin.")
    ] = "read,schedule",
    key_id: Annotated[
        str | None, typer.Option("--id", help="Name of the key in the audit trail.")
    ] = None,
) -> None:
    """Print a new random key (once: it is stored nowhere) and its SCHEDULES_API_KEYS entry
    (its SHA-256, never the key)."""
    try:
        check_tenant(tenant)
        wanted = parse_scopes(scopes)
        key = new_key()
        entry = ApiKeyEntry(
            id=key_id or f"{tenant}-{key[len(KEY_PREFIX) : len(KEY_PREFIX) + 6]}",
            tenant=tenant,
            scopes=wanted,
            sha256=hash_key(key),
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc).splitlines()[-1]) from None
    doc = entry.model_dump(mode="json")
    doc["scopes"] = sorted(doc["scopes"])
    console.print(f"key (shown once; give it as X-API-Key): {key}", soft_wrap=True, highlight=False)
    console.print("add to SCHEDULES_API_KEYS (a JSON list):", highlight=False)
    print(orjson.dumps(doc).decode(), flush=True)


def readable_body(value: bytes, limit: int = 200) -> str:
    """A fired value on one line: UTF-8 text quoted (``repr``), other bytes as ``base64:…``
    (as the HTTP API shows them); at most ``limit`` characters of either, then ``…``."""
    text, encoding = body_view(value)
    shown = repr(text[:limit]) if encoding == "utf-8" else f"base64:{text[:limit]}"
    return shown + ("…" if len(text) > limit else "")


def main() -> None:
    """Entry point of the ``delayline`` script."""
    try:
        app()
    except SettingsError as exc:
        err.print(f"[red]{exc}[/red]")
        sys.exit(2)

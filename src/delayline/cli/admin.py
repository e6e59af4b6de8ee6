"""Commands that run or administer a node: serve, migrate, reshard, rotate-keys."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Annotated

import typer

from delayline.adapters.embedded import EmbeddedValkey
from delayline.adapters.redis_connect import redis_servers
from delayline.adapters.redis_reshard import ReshardRefused, move_to_shards, recorded_shards
from delayline.adapters.runtime_dir import data_dir_lock
from delayline.bootstrap import DataDirInUseError
from delayline.cli.common import (
    ApiKey,
    ApiUrl,
    api_client,
    call_api,
    console,
    err,
    settings_or_exit,
)
from delayline.settings import Settings


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
    settings = settings_or_exit()
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


def migrate() -> None:
    """Apply the ClickHouse migrations (idempotent), showing progress."""
    from delayline.bootstrap import run_migrations_cli

    settings = settings_or_exit()
    try:
        applied = asyncio.run(run_migrations_cli(settings, progress=console.print))
    except Exception as exc:
        err.print(f"[red]migration failed: {exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"{len(applied)} migration(s) applied" if applied else "schema is up to date")


def reshard(
    to: Annotated[int, typer.Option("--to", min=1, max=4096, help="The new shard count.")],
) -> None:
    """Move every pending event, remembered outcome and parked payload to its shard under
    TO shards (set SCHEDULES_REDIS_SHARDS to TO afterwards). Offline: refused while a node
    runs. Safe to run again if interrupted."""
    settings = settings_or_exit()
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


def rotate_keys(
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    interval: Annotated[float, typer.Option(help="Seconds between progress lines.")] = 1.0,
) -> None:
    """Re-seal every stored body and headers with the current keys, in the running service's
    background, printing progress until it ends (the service keeps scheduling and firing)."""
    path = "/api/v1/schedules/monitoring/rotate-keys"
    with api_client(settings_or_exit(), api_url, api_key) as client:
        status = call_api(client, "POST", path)
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
            status = call_api(client, "GET", path)
    if status["state"] == "failed":
        err.print(f"[red]key rotation failed: {status['error']}[/red]")
        raise typer.Exit(1)
    unreadable = sum(t["unreadable"] for t in status["tiers"].values())
    console.print(
        f"key rotation done; {unreadable} payload(s) unreadable with this ring"
        if unreadable
        else "key rotation done"
    )

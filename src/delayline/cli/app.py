"""The ``delayline`` Typer app, assembled from the command modules, and its entry point."""

from __future__ import annotations

import sys

import typer

from delayline.cli import admin, events, keys, tail
from delayline.cli.common import err
from delayline.settings import SettingsError

app = typer.Typer(help="Delayline: delayed events fired to Kafka on time.", no_args_is_help=True)
app.command()(admin.serve)
app.command()(admin.migrate)
app.command()(events.schedule)
app.command()(events.cancel)
app.command("list")(events.list_events)
app.command()(events.show)
app.command()(events.stats)
app.command()(admin.reshard)
app.command("rotate-keys")(admin.rotate_keys)
app.command()(tail.tail)

api_key_app = typer.Typer(help="API keys: make a new one.", no_args_is_help=True)
api_key_app.command("create")(keys.api_key_create)
app.add_typer(api_key_app, name="api-key")


def main() -> None:
    """Entry point of the ``delayline`` script."""
    try:
        app()
    except SettingsError as exc:
        err.print(f"[red]{exc}[/red]")
        sys.exit(2)

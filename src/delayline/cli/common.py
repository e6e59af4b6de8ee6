"""What every ``delayline`` command shares: the consoles, the settings, and the HTTP client
of the running service with its retries."""

from __future__ import annotations

import os
import re
import time
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

from delayline.settings import Settings, SettingsError, load_settings

console = Console()
err = Console(stderr=True)

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(text: str) -> float:
    """``30s``, ``1.5m``, ``250ms``, ``2h``, ``3d`` or plain seconds → seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise typer.BadParameter(f"{text!r} is not a duration like 30s, 5m, 250ms, 2h or 1d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def settings_or_exit() -> Settings:
    """The settings from the environment; a clear error and exit status 2 if they are wrong."""
    try:
        return load_settings()
    except SettingsError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def api_client(settings: Settings, api_url: str | None, api_key: str | None) -> httpx.Client:
    """A client of the service's HTTP API at ``api_url`` (default: the configured host and
    port), sending ``api_key`` (default: ``$DELAYLINE_API_KEY``)."""
    base = api_url or f"http://{settings.api_host}:{settings.api_port}"
    key = api_key or os.environ.get("DELAYLINE_API_KEY")
    headers = {"X-API-Key": key} if key else {}
    return httpx.Client(base_url=base, headers=headers, timeout=30)


RETRIED_STATUSES = frozenset({503, 504})
"""Answers meaning "not stored" (503) or "maybe stored" (504): a request that is safe to repeat
(idempotent, like a schedule with its own id) is sent again."""


def call_api(
    client: httpx.Client, method: str, path: str, *, attempts: int = 1, **kwargs: Any
) -> Any:
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

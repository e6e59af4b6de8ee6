"""Commands on events through the running service: schedule, cancel, list, show, stats."""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Annotated, Any

import httpx
import orjson
import typer

from delayline.cli.common import (
    ApiKey,
    ApiUrl,
    api_client,
    call_api,
    console,
    err,
    parse_duration,
    settings_or_exit,
)
from delayline.domain.events import new_schedule_id
from delayline.domain.limits import due_after

SCHEDULE_ATTEMPTS = 4
"""How many times ``schedule`` sends its request while it times out or answers 503/504."""


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
    with api_client(settings_or_exit(), api_url, api_key) as client:
        result = call_api(
            client, "POST", "/api/v1/schedules", attempts=SCHEDULE_ATTEMPTS, json=payload
        )
    print(result["schedule_id"])


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
    with api_client(settings_or_exit(), api_url, api_key) as client:
        if correlation_id is not None:
            result = call_api(
                client, "DELETE", "/api/v1/schedules", params={"correlation_id": correlation_id}
            )
            console.print(
                f"cancelled {result['total']} "
                f"(redis {result['redis']}, clickhouse {result['clickhouse']})"
            )
            return
        call_api(client, "DELETE", f"/api/v1/schedules/{schedule_id}")
    console.print(f"cancelled {schedule_id}")


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
    with api_client(settings_or_exit(), api_url, api_key) as client:
        while shown < limit:
            page_size = min(1000, limit - shown)
            page = call_api(
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


def show(
    schedule_id: Annotated[str, typer.Argument(help="The schedule id.")],
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Print an event's record and its history (every transition)."""
    with api_client(settings_or_exit(), api_url, api_key) as client:
        event = call_api(client, "GET", f"/api/v1/schedules/{schedule_id}")
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


def stats(api_url: ApiUrl = None, api_key: ApiKey = None) -> None:
    """Print the service's statistics, and the holder of each shard's lease."""
    with api_client(settings_or_exit(), api_url, api_key) as client:
        result = call_api(client, "GET", "/api/v1/schedules/monitoring/stats")
        health: Any = None
        with contextlib.suppress(httpx.HTTPError, ValueError):  # the stats stand on their own
            health = client.get("/api/v1/schedules/monitoring/health").json()
    if isinstance(health, dict) and "shards" in health:
        result["shards"] = health["shards"]
    console.print_json(orjson.dumps(result).decode())

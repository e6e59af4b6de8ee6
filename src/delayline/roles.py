"""The jobs one Delayline process can take on, chosen with ``SCHEDULES_ROLES`` or
``scheduler_service.start(roles=...)``.

- ``schedule``: accepts events in this process (the Python API; the HTTP API and the Kafka
  ingress schedule through it too).
- ``fire``: runs the dispatcher that publishes due events to Kafka.
- ``sync``: moves ClickHouse events into Redis as they come due, and cleans up.
- ``api``: serves the HTTP API.
- ``ingest``: consumes the delayed-events Kafka topic.

Several processes may share one set of servers with different roles: a web app that imports
the Python API with ``roles={"schedule"}`` never fires or syncs; a ``delayline serve --roles
fire,sync`` next to it does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

Role = Literal["schedule", "fire", "sync", "api", "ingest"]

ALL_ROLES: frozenset[Role] = frozenset(get_args(Role))
"""What ``all`` means, and what ``delayline serve`` runs by default."""

PYTHON_API_ROLES: frozenset[Role] = frozenset({"schedule", "fire", "sync"})
"""What ``scheduler_service.start()`` runs by default: events scheduled from Python fire."""


def parse_roles(value: str | Iterable[str]) -> frozenset[Role]:
    """Roles from ``"fire,sync"``, ``"all"`` or an iterable of names; an unknown name or an
    empty set is a ``ValueError`` naming the choices."""
    names = value.split(",") if isinstance(value, str) else list(value)
    cleaned = {name.strip().lower() for name in names if name.strip()}
    if "all" in cleaned:
        cleaned = (cleaned - {"all"}) | set(ALL_ROLES)
    unknown = sorted(cleaned - ALL_ROLES)
    if unknown:
        raise ValueError(
            f"unknown role(s) {', '.join(unknown)}: choose from {', '.join(sorted(ALL_ROLES))} "
            "or all"
        )
    if not cleaned:
        raise ValueError(f"give at least one role: {', '.join(sorted(ALL_ROLES))} or all")
    return frozenset(role for role in ALL_ROLES if role in cleaned)

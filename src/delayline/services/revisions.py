"""The revision of an event version: what an upsert compares to keep only the newest version."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import orjson

from delayline.domain.events import ScheduledEvent


def kafka_revision(
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]],
) -> str:
    """The revision of a version that came from a delayed-topic message: its position and a
    hash of its key, value and headers. The same message again (a redelivery, or a producer
    sending it twice) has the same hash; of two messages in one partition, the earlier offset
    with a timestamp no later is older (a topic re-created from offset 0 has later ones)."""
    digest = hashlib.blake2b(digest_size=8)
    for part in (key, value, *(x for name, data in headers for x in (name.encode(), data))):
        digest.update(b"-" if part is None else b"%d:" % len(part) + part)
    return f"{partition}:{offset}:{timestamp_ms or 0}#{digest.hexdigest()}"


def content_revision(event: ScheduledEvent) -> str:
    """The revision of a version given over HTTP or Python: a hash of what it would publish
    and when, so the same version sent twice is one version."""
    body = event.body
    raw = body.encode() if isinstance(body, str) else bytes(body)
    meta = orjson.dumps(
        [
            event.topic,
            event.entity_type,
            event.action,
            event.correlation_id,
            sorted(event.headers.items()),
            event.due_us,
            event.priority,
            event.max_delay_seconds,
        ]
    )
    return "#" + hashlib.blake2b(meta + b"\n" + raw, digest_size=8).hexdigest()

"""The Arrow row codec of ``event_schedules`` and the rule that makes one version from another.

Every read of event rows selects :data:`SELECT_COLUMNS` with ``query_arrow`` and decodes it with
:func:`decode_rows`; every write is :func:`encode_rows` (or the read table itself, with the
columns a new version changes replaced) through one ``insert_arrow``. The next version of a row
is made by :func:`next_stamps` alone (``long_term_store`` explains the versions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from delayline.adapters.encryption import SEALED_HEADERS, PayloadCipher, open_columns, seal_columns
from delayline.domain.codec import UndecryptablePayload
from delayline.domain.events import EventStatus, ScheduledEvent

TIMESTAMP = pa.timestamp("us", tz="UTC")
ARROW_SCHEMA = pa.schema(
    [
        ("schedule_id", pa.string()),
        ("topic", pa.string()),
        ("entity_type", pa.string()),
        ("action", pa.string()),
        ("body", pa.binary()),  # opaque bytes; a String column holds any
        ("correlation_id", pa.string()),
        ("headers", pa.string()),
        ("scheduled_at", TIMESTAMP),
        ("max_delay_seconds", pa.uint32()),
        ("priority", pa.int32()),
        ("status", pa.string()),
        ("created_at", TIMESTAMP),
        ("updated_at", TIMESTAMP),
        ("attempts", pa.uint32()),
        ("last_error", pa.string()),
        ("version", pa.uint64()),
        ("retain_from", TIMESTAMP),
        ("listed_at", TIMESTAMP),
    ]
)
"""One stored version as Arrow columns: what is read and what is written."""

SELECT_COLUMNS = ", ".join(
    "CAST(status, 'String') AS status" if name == "status" else name for name in ARROW_SCHEMA.names
)
"""The columns of :data:`ARROW_SCHEMA` as a ``SELECT`` returns them to ``query_arrow`` (the
status enum as its name; Arrow output gives a String column as binary, so bodies keep their
exact bytes)."""

_TIMESTAMPS = [f.name for f in ARROW_SCHEMA if pa.types.is_timestamp(f.type)]
_STATUS = {status.value: status for status in EventStatus}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SLOTS = [getattr(ScheduledEvent, f.name).__set__ for f in fields(ScheduledEvent)]
"""The slot setters of :class:`ScheduledEvent`, in field order."""


class StoredRow:
    """One stored version: the event plus its ``version``, ``retain_from`` and ``listed_at``.

    ``sealed``: the body column as stored when the key ring could not open it (the event then
    has no body or headers, and its ``last_error`` says why); later versions keep it as is.
    """

    __slots__ = ("event", "listed_at", "retain_from", "sealed", "version")

    def __init__(
        self,
        event: ScheduledEvent,
        version: int,
        retain_from: datetime,
        listed_at: datetime | None = None,
        sealed: bytes | None = None,
    ) -> None:
        self.event = event
        self.version = version
        self.retain_from = retain_from
        self.listed_at = event.scheduled_at if listed_at is None else listed_at
        self.sealed = sealed


def first_row(event: ScheduledEvent) -> StoredRow:
    """Version 1 of a new event."""
    return StoredRow(event, 1, max(event.scheduled_at, event.updated_at))


def next_stamps(
    row: StoredRow, scheduled_at: datetime, updated_at: datetime, bump: int
) -> tuple[int, datetime, datetime]:
    """``(version, retain_from, listed_at)`` of the version after ``row`` whose event is due
    at ``scheduled_at`` and changed at ``updated_at``: the version goes up by ``bump``,
    ``retain_from`` never decreases, and ``listed_at`` is no later than ``row``'s due time."""
    return (
        row.version + bump,
        max(row.retain_from, scheduled_at, updated_at),
        min(scheduled_at, row.event.scheduled_at),
    )


def successor(
    row: StoredRow, event: ScheduledEvent, bump: int, new_payload: bool = False
) -> StoredRow:
    """The version after ``row`` holding ``event`` (:func:`next_stamps`). An unopened payload
    is kept as stored unless ``new_payload`` replaces it."""
    version, retain, listed = next_stamps(row, event.scheduled_at, event.updated_at, bump)
    return StoredRow(event, version, retain, listed, None if new_payload else row.sealed)


def _open(
    cipher: PayloadCipher | None, schedule_id: str, body: bytes, headers: str
) -> tuple[dict[str, str], bytes, UndecryptablePayload | None]:
    """The headers and body of a row; none, and the error, when they cannot be opened."""
    try:
        return (*open_columns(cipher, schedule_id, body, headers), None)
    except UndecryptablePayload as exc:
        if cipher is not None:
            cipher.unreadable.found("clickhouse", exc)
        return {}, b"", exc


def _datetimes(column: pa.ChunkedArray) -> list[datetime]:
    """Aware UTC datetimes of a timestamp column, exact to the microsecond; each distinct
    value built once (Arrow's own ``to_pylist`` with a time zone is several times slower)."""
    values = column.cast(pa.int64()).to_pylist()
    built = {v: _EPOCH + timedelta(microseconds=v) for v in set(values)}
    return [built[v] for v in values]


def _event(values: Sequence[Any]) -> ScheduledEvent:
    """A :class:`ScheduledEvent` of stored (already validated) field values, in field order,
    without the frozen dataclass's ``__init__`` (the sync builds a whole page at a time)."""
    event: ScheduledEvent = object.__new__(ScheduledEvent)
    for setter, value in zip(_SLOTS, values, strict=True):
        setter(event, value)
    return event


def as_stored(table: pa.Table) -> pa.Table:
    """A ``query_arrow`` result of :data:`SELECT_COLUMNS` with exactly :data:`ARROW_SCHEMA`."""
    return table.select(ARROW_SCHEMA.names).cast(ARROW_SCHEMA)


def decode_rows(table: pa.Table, cipher: PayloadCipher | None = None) -> list[StoredRow]:
    """The rows of ``table`` (columns of :data:`ARROW_SCHEMA`), decoded column by column."""
    c: dict[str, list[Any]] = {
        name: table.column(name).to_pylist() for name in table.column_names
        if name not in _TIMESTAMPS
    }  # fmt: skip
    for name in _TIMESTAMPS:
        c[name] = _datetimes(table.column(name))
    opened = [
        _open(cipher, sid, body, headers)
        for sid, body, headers in zip(c["schedule_id"], c["body"], c["headers"], strict=True)
    ]
    sealed = [body if o[2] else None for body, o in zip(c["body"], opened, strict=True)]
    errors = [
        o[2].reason if o[2] else (e or None) for e, o in zip(c["last_error"], opened, strict=True)
    ]
    values = zip(
        c["schedule_id"],
        c["topic"],
        c["entity_type"],
        c["action"],
        [o[1] for o in opened],
        c["correlation_id"],
        [o[0] for o in opened],
        c["scheduled_at"],
        c["max_delay_seconds"],
        c["priority"],
        [_STATUS[s] for s in c["status"]],
        c["created_at"],
        c["updated_at"],
        c["attempts"],
        errors,
        strict=True,
    )
    return [
        StoredRow(_event(event), version, retain, listed, sealed_body)
        for event, version, retain, listed, sealed_body in zip(
            values, c["version"], c["retain_from"], c["listed_at"], sealed, strict=True
        )
    ]


def _payload_columns(row: StoredRow, cipher: PayloadCipher | None) -> tuple[bytes, str]:
    if row.sealed is not None:  # could not be opened: kept as it was
        return row.sealed, SEALED_HEADERS
    e = row.event
    return seal_columns(cipher, e.schedule_id, e.entity_type, e.headers, e.body)


def encode_rows(rows: Sequence[StoredRow], cipher: PayloadCipher | None = None) -> pa.Table:
    """``rows`` as a table of :data:`ARROW_SCHEMA`, payloads sealed with ``cipher``."""
    events = [r.event for r in rows]
    payloads = [_payload_columns(r, cipher) for r in rows]
    return pa.Table.from_pydict(
        {
            "schedule_id": [e.schedule_id for e in events],
            "topic": [e.topic for e in events],
            "entity_type": [e.entity_type for e in events],
            "action": [e.action for e in events],
            "body": [p[0] for p in payloads],
            "correlation_id": [e.correlation_id for e in events],
            "headers": [p[1] for p in payloads],
            # Aware datetimes go to Arrow as they are: converted in C, much faster than Python.
            "scheduled_at": [e.scheduled_at for e in events],
            "max_delay_seconds": [e.max_delay_seconds for e in events],
            "priority": [e.priority for e in events],
            "status": [e.status.value for e in events],
            "created_at": [e.created_at for e in events],
            "updated_at": [e.updated_at for e in events],
            "attempts": [e.attempts for e in events],
            "last_error": [e.last_error or "" for e in events],
            "version": [r.version for r in rows],
            "retain_from": [r.retain_from for r in rows],
            "listed_at": [r.listed_at for r in rows],
        },
        schema=ARROW_SCHEMA,
    )

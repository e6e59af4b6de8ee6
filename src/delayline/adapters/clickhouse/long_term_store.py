"""The long-term tier on ClickHouse: ``event_schedules`` as versioned rows.

Every change is a new row of the event with a higher ``version``; reads take the newest
version with ``FINAL`` (schema and measurements: ``migrations``).

Versions and the sync race (the protocol the scheduler service follows):

* ``insert`` writes version 1.
* User actions — :meth:`cancel`, :meth:`reschedule`, :meth:`mark_status`, :meth:`upsert`
  over an existing id, :meth:`supersede` — read the current version ``c`` and write ``c + 2``.
* The sync reads pending events with :meth:`due_before`, inserts them into Redis idempotently
  (insert-if-absent by ``schedule_id``), then calls :meth:`mark_queued` with the events it read.
  ``mark_queued`` writes ``queued`` at ``v + 1`` (``v``: the version the sync read) only for
  events still unchanged since that read, and returns the ids that changed meanwhile: **the
  sync must take those back out of Redis** (they were cancelled or rescheduled; a rescheduled
  one is pending here again, and a later sync moves it at its new time).
* A user action racing with a sync's ``queued`` write always wins: ``c + 2 > v + 1`` whatever
  the order in which the rows land or the nodes' clocks say. So the service cancels (or
  reschedules) **here first, then cancels the event in Redis**: whichever copy the sync put
  in Redis is removed either by the sync (it saw the change) or by the service (the event was
  already in Redis when the service looked there). A cancelled event never fires.

Two user actions on one event at the same moment both write ``c + 2``; the row inserted last
wins, as ``ReplacingMergeTree`` keeps the last of equal versions.

How the sync finds due events without ``FINAL`` (``FINAL`` over 10M rows took 6–8 s a query):
every row carries ``listed_at``, the minimum of its own ``scheduled_at`` and its predecessor's
(:meth:`ClickHouseLongTermStore._next`), and the ``by_listed`` projection keeps a copy of the
rows sorted by it (migration 2). A row due by ``t`` has ``listed_at <= t``, and so does every
later version of it, whatever it changes (a reschedule to a later time included). So the rows
with ``listed_at <= t`` hold, for every event due by ``t``, all its versions newer than its
oldest due one: the newest of those (highest ``version``, then the part with the higher block
number, as ``FINAL`` picks) is the event's current version. :meth:`due_before` and
:meth:`mark_queued` read only that prefix of the projection, never the whole table.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from delayline.adapters.clickhouse.migrations import EVENTS_TABLE
from delayline.adapters.encryption import (
    SEALED_HEADERS,
    PayloadCipher,
    RekeyPage,
    open_columns,
    seal_columns,
    sealed_key_id,
)
from delayline.domain.codec import UndecryptablePayload
from delayline.domain.events import (
    TERMINAL_STATUSES,
    EventStatus,
    ScheduledEvent,
    from_epoch_us,
    to_epoch_us,
    utc_now,
)

_FINAL_SETTINGS = " SETTINGS do_not_merge_across_partitions_select_final = 1"
"""All versions of an event share a partition (``created_at`` never changes): safe, faster."""
_LOOKUP_CHUNK = 50_000
"""Ids per ``IN`` lookup. Random ids touch every granule of the sort key, so each lookup
scans the id column once: few big lookups beat many small ones."""
_TERMINAL_SQL = ", ".join(f"'{s.value}'" for s in sorted(TERMINAL_STATUSES))
_LIVE = frozenset({EventStatus.PENDING, EventStatus.QUEUED})

_COLUMNS = (
    "schedule_id, topic, entity_type, action, body, correlation_id, headers, "
    "toUnixTimestamp64Micro(scheduled_at), max_delay_seconds, priority, CAST(status, 'String'), "
    "toUnixTimestamp64Micro(created_at), toUnixTimestamp64Micro(updated_at), attempts, "
    "last_error, version, toUnixTimestamp64Micro(retain_from), toUnixTimestamp64Micro(listed_at)"
)
_ARROW_COLUMNS = (
    "schedule_id, topic, entity_type, action, body, correlation_id, headers, scheduled_at, "
    "max_delay_seconds, priority, CAST(status, 'String') AS status, created_at, updated_at, "
    "attempts, last_error, version, retain_from, listed_at"
)
"""The columns of :data:`_ARROW_SCHEMA`, as a query returns them to ``query_arrow``."""
_BODY_AS_BYTES = {"body": "bytes"}
"""``query`` column formats for :data:`_COLUMNS`: the body as its exact bytes (by default
clickhouse-connect decodes a String as UTF-8, and writes a value that is not UTF-8 in hex)."""
_BLOCK = "toUInt64(splitByChar('_', _part)[2])"
"""The first block number of the row's part: of two rows of an event with equal versions,
``FINAL`` keeps the one in the part with the higher number (the later insert)."""
_UNTIL = "fromUnixTimestamp64Micro({until:Int64}, 'UTC')"
_KEY = "(toUnixTimestamp64Micro(scheduled_at), -toInt64(priority), schedule_id)"
"""An event's place in the sync's order: due time, then higher priority, then id."""
_IN_PAGE = (
    f"listed_at <= {_UNTIL} AND status = 'pending' AND scheduled_at <= {_UNTIL} "
    f"AND {_KEY} > ({{lo_us:Int64}}, {{lo_rank:Int64}}, {{lo_id:String}}) "
    f"AND {_KEY} <= ({{hi_us:Int64}}, {{hi_rank:Int64}}, {{hi_id:String}})"
)
"""Pending rows due by ``until`` whose key is in ``(lo, hi]``."""
_PAGE_END_SQL = (
    "SELECT count(), max(key) FROM ("
    f"  SELECT {_KEY} AS key FROM {{table}} WHERE {_IN_PAGE} ORDER BY key LIMIT {{scan:UInt32}})"
)
"""How many (at most ``scan``) and the last key of the first ``scan`` pending rows after
``lo``: every current version in ``(lo, that key]`` is among them."""
_NEWEST = (
    f"max((version, {_BLOCK})) AS newest, argMax((CAST(status, 'String'), "
    "toUnixTimestamp64Micro(scheduled_at), priority, toUnixTimestamp64Micro(updated_at)), "
    f"(version, {_BLOCK})) AS cur"
)
_IDS_IN_PAGE = (
    f"SELECT schedule_id, {_NEWEST} FROM {{table}} WHERE listed_at <= {_UNTIL} "
    f"AND schedule_id IN (SELECT schedule_id FROM {{table}} WHERE {_IN_PAGE}) "
    "GROUP BY schedule_id"
)
"""The current version of every event with a pending row due in the page (any status)."""
_DUE_SQL = (
    "SELECT {columns} FROM {table} "
    f"WHERE listed_at <= {_UNTIL} AND (schedule_id, version, {_BLOCK}) IN ("
    "  SELECT schedule_id, newest.1, newest.2 FROM ("
    f"    {_IDS_IN_PAGE} HAVING cur.1 = 'pending' AND cur.2 <= {{until:Int64}} "
    "      AND (cur.2, -toInt64(cur.3), schedule_id) "
    "        > ({lo_us:Int64}, {lo_rank:Int64}, {lo_id:String}) "
    "      AND (cur.2, -toInt64(cur.3), schedule_id) "
    "        <= ({hi_us:Int64}, {hi_rank:Int64}, {hi_id:String}) "
    "    ORDER BY cur.2, cur.3 DESC, schedule_id LIMIT {limit:UInt32})) "
    "ORDER BY scheduled_at, priority DESC, schedule_id"
)
"""Pending events due by ``until`` (current versions only) whose key is in ``(lo, hi]``,
earliest first, at most ``limit``; read from the ``listed_at`` prefix alone (module
docstring). ``{columns}`` and ``{table}`` are filled in by Python."""
_Key = tuple[int, int, str]
_START: _Key = (-(2**63), -(2**63), "")
"""A key before every event's."""
_END: _Key = (2**63 - 1, 2**63 - 1, "\U0010ffff" * 8)
"""A key after every event's (ids are ASCII)."""


def _bounds(lo: _Key, hi: _Key) -> dict[str, Any]:
    return {
        "lo_us": lo[0],
        "lo_rank": lo[1],
        "lo_id": lo[2],
        "hi_us": hi[0],
        "hi_rank": hi[1],
        "hi_id": hi[2],
    }


_TS = pa.timestamp("us", tz="UTC")
_ARROW_SCHEMA = pa.schema(
    [
        ("schedule_id", pa.string()),
        ("topic", pa.string()),
        ("entity_type", pa.string()),
        ("action", pa.string()),
        ("body", pa.binary()),  # opaque bytes; a String column holds any
        ("correlation_id", pa.string()),
        ("headers", pa.string()),
        ("scheduled_at", _TS),
        ("max_delay_seconds", pa.uint32()),
        ("priority", pa.int32()),
        ("status", pa.string()),
        ("created_at", _TS),
        ("updated_at", _TS),
        ("attempts", pa.uint32()),
        ("last_error", pa.string()),
        ("version", pa.uint64()),
        ("retain_from", _TS),
        ("listed_at", _TS),
    ]
)


class _Client(Protocol):
    database: str

    async def query(
        self, sql: str, parameters: Any = None, *, column_formats: Any = None
    ) -> Sequence[Sequence[Any]]: ...

    async def query_arrow(self, sql: str, parameters: Any = None) -> pa.Table: ...

    async def command(self, sql: str, parameters: Any = None) -> Any: ...

    async def insert_arrow(self, table: str, data: pa.Table) -> None: ...


class _Row:
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


class DueEvents(list[ScheduledEvent]):
    """What :meth:`ClickHouseLongTermStore.due_before` returns: the events, plus the versions
    read (so :meth:`~ClickHouseLongTermStore.mark_queued` need not read them again) and the
    rows as Arrow (so it writes the ``queued`` versions column-wise)."""

    __slots__ = ("lo", "rows", "table", "until_us")

    def __init__(self, rows: Sequence[_Row], table: pa.Table, until_us: int, lo: _Key) -> None:
        super().__init__(row.event for row in rows)
        self.rows = {row.event.schedule_id: row for row in rows}
        self.table = table
        self.until_us = until_us
        self.lo = lo

    @property
    def hi(self) -> _Key:
        """The key of the last event (the page ends there)."""
        last = self[-1]
        return (last.due_us, -last.priority, last.schedule_id)


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


def _decode(row: Sequence[Any], cipher: PayloadCipher | None = None) -> _Row:
    headers, body, unreadable = _open(cipher, row[0], row[4], row[6])
    event = ScheduledEvent(
        schedule_id=row[0],
        topic=row[1],
        entity_type=row[2],
        action=row[3],
        body=body,
        correlation_id=row[5],
        headers=headers,
        scheduled_at=from_epoch_us(int(row[7])),
        max_delay_seconds=int(row[8]),
        priority=int(row[9]),
        status=EventStatus(row[10]),
        created_at=from_epoch_us(int(row[11])),
        updated_at=from_epoch_us(int(row[12])),
        attempts=int(row[13]),
        last_error=unreadable.reason if unreadable else (row[14] or None),
    )
    return _Row(
        event,
        int(row[15]),
        from_epoch_us(int(row[16])),
        from_epoch_us(int(row[17])),
        sealed=row[4] if unreadable else None,
    )


_STATUS = {status.value: status for status in EventStatus}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SLOTS = [getattr(ScheduledEvent, f.name).__set__ for f in fields(ScheduledEvent)]
"""The slot setters of :class:`ScheduledEvent`, in field order."""


def _datetimes(column: pa.ChunkedArray) -> list[datetime]:
    """Aware UTC datetimes of a timestamp column, exact to the microsecond; each distinct
    value built once (Arrow's own ``to_pylist`` with a time zone costs ~5 µs a value)."""
    values = column.cast(pa.int64()).to_pylist()
    built = {v: _EPOCH + timedelta(microseconds=v) for v in set(values)}
    return [built[v] for v in values]


def _event(values: Sequence[Any]) -> ScheduledEvent:
    """A :class:`ScheduledEvent` of stored (already validated) field values, in field order,
    without the frozen dataclass's ``__init__`` (4× faster: the sync builds 100k at a time)."""
    event: ScheduledEvent = object.__new__(ScheduledEvent)
    for setter, value in zip(_SLOTS, values, strict=True):
        setter(event, value)
    return event


def _decode_arrow(table: pa.Table, cipher: PayloadCipher | None = None) -> list[_Row]:
    """The rows of a ``query_arrow`` result (columns of :data:`_ARROW_SCHEMA`), decoded column
    by column."""
    c: dict[str, list[Any]] = {
        name: table.column(name).to_pylist()
        for name in table.column_names
        if not pa.types.is_timestamp(table.schema.field(name).type)
    }
    for name in ("scheduled_at", "created_at", "updated_at", "retain_from", "listed_at"):
        c[name] = _datetimes(table.column(name))
    opened = [
        _open(cipher, sid, body, headers)
        for sid, body, headers in zip(c["schedule_id"], c["body"], c["headers"], strict=True)
    ]
    sealed = [body if o[2] else None for body, o in zip(c["body"], opened, strict=True)]
    c["body"] = [o[1] for o in opened]
    headers = [o[0] for o in opened]
    statuses = [_STATUS[s] for s in c["status"]]
    errors = [
        o[2].reason if o[2] else (e or None) for e, o in zip(c["last_error"], opened, strict=True)
    ]
    rows = zip(
        c["schedule_id"],
        c["topic"],
        c["entity_type"],
        c["action"],
        c["body"],
        c["correlation_id"],
        headers,
        c["scheduled_at"],
        c["max_delay_seconds"],
        c["priority"],
        statuses,
        c["created_at"],
        c["updated_at"],
        c["attempts"],
        errors,
        strict=True,
    )
    return [
        _Row(_event(values), version, retain, listed, sealed_body)
        for values, version, retain, listed, sealed_body in zip(
            rows, c["version"], c["retain_from"], c["listed_at"], sealed, strict=True
        )
    ]


def _payload_columns(row: _Row, cipher: PayloadCipher | None) -> tuple[bytes, str]:
    if row.sealed is not None:  # could not be opened: kept as it was
        return row.sealed, SEALED_HEADERS
    e = row.event
    return seal_columns(cipher, e.schedule_id, e.entity_type, e.headers, e.body)


def _to_arrow(rows: Sequence[_Row], cipher: PayloadCipher | None = None) -> pa.Table:
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
            # Aware datetimes go to Arrow as they are: converted in C, ~10x faster than Python.
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
        schema=_ARROW_SCHEMA,
    )


def same_content(a: ScheduledEvent, b: ScheduledEvent) -> bool:
    """Whether two versions of an event would publish the same message at the same time."""
    return (
        a.topic == b.topic
        and a.body == b.body
        and a.scheduled_at == b.scheduled_at
        and a.entity_type == b.entity_type
        and a.action == b.action
        and a.correlation_id == b.correlation_id
        and dict(a.headers) == dict(b.headers)
        and a.priority == b.priority
        and a.max_delay_seconds == b.max_delay_seconds
    )


def _key_id_or_none(head: bytes) -> str | None:
    try:
        return sealed_key_id(head)
    except UndecryptablePayload:
        return None


def _chunks(items: Sequence[str], size: int = _LOOKUP_CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class ClickHouseLongTermStore:
    """:class:`delayline.ports.LongTermStore` on ``{database}.event_schedules``, plus what the
    sync, cleanup and stats need. The table must exist (``run_migrations``)."""

    def __init__(self, client: _Client, cipher: PayloadCipher | None = None) -> None:
        self._client = client
        self._table = f"{client.database}.{EVENTS_TABLE}"
        self._cipher = cipher

    async def _current(self, ids: Sequence[str]) -> dict[str, _Row]:
        """The newest version of each stored id: the row ``FINAL`` would keep, picked per id
        without ``FINAL``, which reads every column of each granule the ids fall in; this
        reads the id column there and the rest only where an id matched."""
        found: dict[str, _Row] = {}
        for chunk in _chunks(list(dict.fromkeys(ids))):
            rows = await self._client.query(
                f"SELECT {_COLUMNS} FROM {self._table} "
                "PREWHERE schedule_id IN {ids:Array(String)} "
                f"ORDER BY schedule_id, version DESC, {_BLOCK} DESC LIMIT 1 BY schedule_id",
                {"ids": list(chunk)},
                column_formats=_BODY_AS_BYTES,
            )
            for raw in rows:
                row = _decode(raw, self._cipher)
                found[row.event.schedule_id] = row
        return found

    async def _write(self, rows: Sequence[_Row]) -> None:
        if rows:
            await self._client.insert_arrow(self._table, _to_arrow(rows, self._cipher))

    @staticmethod
    def _next(row: _Row, event: ScheduledEvent, bump: int, new_payload: bool = False) -> _Row:
        """The version after ``row`` holding ``event``; ``retain_from`` never decreases, and
        ``listed_at`` is no later than ``row``'s due time (module docstring)."""
        retain = max(row.retain_from, event.scheduled_at, event.updated_at)
        listed = min(event.scheduled_at, row.event.scheduled_at)
        sealed = None if new_payload else row.sealed  # unopened: kept unless replaced
        return _Row(event, row.version + bump, retain, listed, sealed)

    async def insert(self, events: Sequence[ScheduledEvent]) -> list[bool]:
        """Insert events whose schedule_id is not stored yet, in ONE Arrow insert.

        True where inserted; False for an id already stored or repeated earlier in ``events``.
        Two nodes inserting the same new id at the same moment may both write it: the rows
        collapse into one event (the later one wins), so it is still scheduled once.
        """
        existing = await self.known([e.schedule_id for e in events])
        fresh: list[_Row] = []
        inserted: list[bool] = []
        for event in events:
            new = event.schedule_id not in existing
            inserted.append(new)
            if new:
                existing.add(event.schedule_id)
                fresh.append(_Row(event, 1, max(event.scheduled_at, event.updated_at)))
        await self._write(fresh)
        return inserted

    async def known(self, ids: Sequence[str]) -> set[str]:
        """The ids stored here in any version (a light lookup: no ``FINAL``, no bodies)."""
        found: set[str] = set()
        for chunk in _chunks(list(dict.fromkeys(ids))):
            rows = await self._client.query(
                f"SELECT DISTINCT schedule_id FROM {self._table} "
                "WHERE schedule_id IN {ids:Array(String)}",
                {"ids": list(chunk)},
            )
            found.update(str(r[0]) for r in rows)
        return found

    async def upsert(self, events: Sequence[ScheduledEvent]) -> list[int]:
        """Make each event the current version of its id, in order, in ONE Arrow insert.

        Per event: 1 stored (the id was not here), 2 a new version over the current one
        (pending at its new time: a live event is replaced, a cancelled or finished one is
        scheduled again), 0 nothing written (the current version is pending with the same
        content: a redelivery). The new version keeps the row's ``created_at`` (all
        versions of an event share a partition).
        """
        current = await self._current([e.schedule_id for e in events])
        now = utc_now()
        rows: list[_Row] = []
        codes: list[int] = []
        for event in events:
            row = current.get(event.schedule_id)
            if row is None:
                new = _Row(event, 1, max(event.scheduled_at, event.updated_at))
                codes.append(1)
            elif row.event.status is EventStatus.PENDING and same_content(row.event, event):
                codes.append(0)
                continue
            else:
                version = replace(
                    event,
                    status=EventStatus.PENDING,
                    created_at=row.event.created_at,
                    updated_at=now,
                )
                new = self._next(row, version, 2, new_payload=True)
                codes.append(2)
            current[event.schedule_id] = new
            rows.append(new)
        await self._write(rows)
        return codes

    async def supersede(self, ids: Sequence[str]) -> set[str]:
        """Cancel the pending or queued version of each id that has one (the event now lives
        in the Redis tier in a newer version); returns those ids. One light lookup when none
        of the ids is stored here (the common case)."""
        stored = await self.known(ids)
        if not stored:
            return set()
        now = utc_now()
        live = [row for row in (await self._current(list(stored))).values()
                if row.event.status in _LIVE]  # fmt: skip
        await self._write(
            [self._next(r, r.event.with_status(EventStatus.CANCELLED, at=now), 2) for r in live]
        )
        return {r.event.schedule_id for r in live}

    async def get(self, schedule_id: str) -> ScheduledEvent | None:
        """The newest version of the event, with its status; None if not stored."""
        row = (await self._current([schedule_id])).get(schedule_id)
        return row.event if row else None

    async def cancel(self, schedule_id: str) -> bool:
        """Mark a pending or queued event cancelled; True if it was one of those.

        A queued event sits in Redis as well: the caller must cancel it there too, after this
        (module docstring), and should do so whatever this returns.
        """
        return await self.cancel_live(schedule_id) is not None

    async def cancel_live(self, schedule_id: str) -> EventStatus | None:
        """:meth:`cancel`, answering the status it cancelled (``pending``: the event was only
        here; ``queued``: whether it is cancelled is decided by its Redis copy), or None."""
        return (await self.cancel_many([schedule_id])).get(schedule_id)

    async def cancel_many(self, ids: Sequence[str]) -> dict[str, EventStatus]:
        """:meth:`cancel_live` for many events at once (one read, one insert): the status each
        cancelled one had (pending or queued)."""
        now = utc_now()
        live = [row for row in (await self._current(ids)).values() if row.event.status in _LIVE]
        await self._write(
            [
                self._next(row, row.event.with_status(EventStatus.CANCELLED, at=now), 2)
                for row in live
            ]
        )
        return {row.event.schedule_id: row.event.status for row in live}

    async def reschedule(self, schedule_id: str, scheduled_at: datetime) -> bool:
        """Make a pending or queued event pending at ``scheduled_at``; True if it was one.

        A queued event was moved into Redis: the caller must cancel it there after this; the
        sync moves it again when its new time comes near.
        """
        return schedule_id in await self.reschedule_many([schedule_id], scheduled_at)

    async def reschedule_many(
        self, ids: Sequence[str], scheduled_at: datetime
    ) -> dict[str, ScheduledEvent]:
        """:meth:`reschedule` for many events at once (one read, one insert): the new version
        of each one moved."""
        now = utc_now()
        live = [row for row in (await self._current(ids)).values() if row.event.status in _LIVE]
        moved = [
            self._next(
                row,
                replace(
                    row.event.with_status(EventStatus.PENDING, at=now), scheduled_at=scheduled_at
                ),
                2,
            )
            for row in live
        ]
        await self._write(moved)
        return {row.event.schedule_id: row.event for row in moved}

    async def due_before(self, until: datetime, limit: int) -> DueEvents:
        """Pending events due at or before ``until``, earliest first (higher priority first
        among equal times), at most ``limit``. Pass them to :meth:`mark_queued` unchanged."""
        return await self.due_after(until, limit, None)

    async def due_after(
        self, until: datetime, limit: int, after: tuple[datetime, int, str] | None
    ) -> DueEvents:
        """:meth:`due_before`, continuing after ``after``: the ``(scheduled_at, priority,
        schedule_id)`` of the last event of the previous page, so the sync can read the next
        page before the previous one is marked ``queued``.

        Reads only the ``listed_at <= until`` prefix of the ``by_listed`` projection (module
        docstring), a page of ``limit`` pending rows at a time: the rows of events already
        queued but not merged away yet are skipped a page at a time.
        """
        until_us = to_epoch_us(until)
        lo: _Key = _START if after is None else (to_epoch_us(after[0]), -after[1], after[2])
        start = lo
        found: list[pa.Table] = []
        wanted = limit
        while wanted > 0:
            params = {"until": until_us, "scan": wanted, **_bounds(lo, _END)}
            count, end = (
                await self._client.query(_PAGE_END_SQL.replace("{table}", self._table), params)
            )[0]
            if not count:
                break
            hi: _Key = (int(end[0]), int(end[1]), str(end[2]))
            table = await self._client.query_arrow(
                _DUE_SQL.replace("{columns}", _ARROW_COLUMNS).replace("{table}", self._table),
                {"until": until_us, "limit": wanted, **_bounds(lo, hi)},
            )
            found.append(table.select(_ARROW_SCHEMA.names).cast(_ARROW_SCHEMA))
            wanted -= table.num_rows
            if count < params["scan"]:
                break  # nothing pending after hi
            lo = hi
        table = pa.concat_tables(found) if found else _ARROW_SCHEMA.empty_table()
        rows = _decode_arrow(table, self._cipher)
        unreadable = [r for r in rows if r.sealed is not None]
        if unreadable:  # never moved to Redis: failed here, with the reason, sealed as it was
            now = utc_now()
            await self._write(
                [
                    self._next(r, replace(r.event, status=EventStatus.FAILED, updated_at=now), 2)
                    for r in unreadable
                ]
            )
            rows = [r for r in rows if r.sealed is None]
        return DueEvents(rows, table, until_us, start)

    async def mark_queued(self, events: Sequence[ScheduledEvent]) -> list[str]:
        """Write ``queued`` for each event still exactly as :meth:`due_before` returned it.

        Returns the ids that changed since (cancelled, rescheduled, …) and were NOT marked:
        the sync must remove them from Redis. See the module docstring. An event another
        sync marked ``queued`` meanwhile is neither marked again nor returned.
        """
        if not events:
            return []
        known = events.rows if isinstance(events, DueEvents) else {}
        read: dict[str, _Row | None] = {e.schedule_id: known.get(e.schedule_id) for e in events}
        if any(row is None or row.event != e for e, row in zip(events, read.values(), strict=True)):
            full = await self._current([e.schedule_id for e in events])  # not from due_before
            read = {e.schedule_id: full.get(e.schedule_id) for e in events}
        if isinstance(events, DueEvents) and read.keys() <= events.rows.keys():
            newest = await self._newest_in_page(events)
            # A merge replaced the pending row read by a newer version (maybe another sync's
            # ``queued``, whose Redis copy must stay): look those few up by id.
            missing = [sid for sid in read if sid not in newest]
            if missing:
                newest.update(await self._newest(missing, from_epoch_us(events.until_us)))
        else:
            seen = [row for row in read.values() if row is not None]
            due_by = max((r.event.scheduled_at for r in seen), default=utc_now())
            newest = await self._newest(list(read), due_by)
        now = utc_now()
        marked: list[_Row] = []
        changed: list[str] = []
        for event in events:
            row = read.get(event.schedule_id)
            current = newest.get(event.schedule_id)
            if (
                row is not None
                and current is not None
                and current[:2]
                == (
                    row.version + 1,
                    EventStatus.QUEUED.value,
                )
            ):
                continue  # another sync moved it meanwhile: its Redis copy is the right one
            if (
                row is None
                or current
                != (
                    row.version,
                    EventStatus.PENDING.value,
                    to_epoch_us(row.event.scheduled_at),
                    to_epoch_us(row.event.updated_at),
                )
                or row.event.updated_at != event.updated_at
                or row.event.scheduled_at != event.scheduled_at
            ):
                changed.append(event.schedule_id)
                continue
            marked.append(row)
        if isinstance(events, DueEvents) and all(
            r is events.rows.get(r.event.schedule_id) for r in marked
        ):
            await self._write_queued(events.table, {r.event.schedule_id for r in marked}, now)
        else:
            await self._write(
                [self._next(r, r.event.with_status(EventStatus.QUEUED, at=now), 1) for r in marked]
            )
        return changed

    async def _write_queued(self, table: pa.Table, ids: set[str], now: datetime) -> None:
        """The ``queued`` version (``version + 1``) of the rows of ``table`` whose id is in
        ``ids``, built column by column (what :meth:`_next` does row by row)."""
        if not ids:
            return
        table = table.filter(pc.is_in(table.column("schedule_id"), pa.array(list(ids))))
        n = table.num_rows
        stamp = pa.scalar(now, type=_TS)
        due = table.column("scheduled_at")
        retain = pc.max_element_wise(  # no kernel for zoned timestamps: compare as µs
            *(c.cast(pa.int64()) for c in (table.column("retain_from"), due)),
            pa.scalar(to_epoch_us(now), pa.int64()),
        ).cast(_TS)
        new = {
            "status": pa.repeat(pa.scalar(EventStatus.QUEUED.value), n),
            "updated_at": pa.repeat(stamp, n),
            "version": pc.add(table.column("version"), pa.scalar(1, pa.uint64())),
            "retain_from": retain,
            "listed_at": due,
        }
        for name, column in new.items():
            table = table.set_column(
                table.schema.get_field_index(name), _ARROW_SCHEMA.field(name), column
            )
        await self._client.insert_arrow(self._table, table.cast(_ARROW_SCHEMA))

    async def _newest_in_page(self, page: DueEvents) -> dict[str, tuple[int, str, int, int]]:
        """:meth:`_newest` of the events of ``page``, found by the page's key range: no id list
        to send. Every event read in the page still has a row there unless a newer version
        replaced it in a merge; then it is missing here (the caller looks it up by id)."""
        rows = await self._client.query(
            _IDS_IN_PAGE.replace("{table}", self._table),
            {"until": page.until_us, **_bounds(page.lo, page.hi)},
        )
        return {
            str(sid): (int(newest[0]), str(cur[0]), int(cur[1]), int(cur[3]))
            for sid, newest, cur in rows
        }

    async def _newest(
        self, ids: Sequence[str], due_by: datetime
    ) -> dict[str, tuple[int, str, int, int]]:
        """The current ``(version, status, scheduled_at µs, updated_at µs)`` of each id due by
        ``due_by`` when read, from the ``listed_at`` prefix only (module docstring): a light
        re-check without ``FINAL`` and without bodies."""
        found: dict[str, tuple[int, str, int, int]] = {}
        for chunk in _chunks(ids):
            rows = await self._client.query(
                "SELECT schedule_id, version, CAST(status, 'String'), "
                "toUnixTimestamp64Micro(scheduled_at), toUnixTimestamp64Micro(updated_at) "
                f"FROM {self._table} WHERE listed_at <= {_UNTIL} "
                "AND schedule_id IN {ids:Array(String)} "
                f"ORDER BY schedule_id, version DESC, {_BLOCK} DESC LIMIT 1 BY schedule_id",
                {"ids": list(chunk), "until": to_epoch_us(due_by)},
            )
            found.update({str(r[0]): (int(r[1]), str(r[2]), int(r[3]), int(r[4])) for r in rows})
        return found

    async def mark_status(
        self, ids: Sequence[str], status: EventStatus, reason: str | None = None
    ) -> int:
        """Record ``status`` (e.g. a final one reported by the dispatcher) for each event not
        already finished; returns how many rows were written."""
        current = await self._current(ids)
        now = utc_now()
        rows: list[_Row] = []
        for row in current.values():
            if row.event.status.is_terminal:
                continue
            event = replace(row.event, status=status, updated_at=now)
            if reason:
                event = replace(event, last_error=reason)
            rows.append(self._next(row, event, 2))
        await self._write(rows)
        return len(rows)

    async def cleanup(self, older_than: datetime) -> int:
        """Delete every version of events finished before ``older_than``, and of events
        handed to Redis (``queued``) that were due before it; returns how many events.

        A ``queued`` row's outcome lives in Redis and the analytics table; without this the
        table, and the ``listed_at`` prefix every sync reads, would grow with all history.
        Live events are never touched."""
        where = (
            f"SELECT schedule_id FROM {self._table} FINAL WHERE (status IN ({_TERMINAL_SQL}) "
            "AND updated_at < fromUnixTimestamp64Micro({before:Int64}, 'UTC')) "
            "OR (status = 'queued' "
            "AND scheduled_at < fromUnixTimestamp64Micro({before:Int64}, 'UTC'))"
        )
        params = {"before": to_epoch_us(older_than)}
        rows = await self._client.query(f"SELECT count() FROM ({where}{_FINAL_SETTINGS})", params)
        count = int(rows[0][0]) if rows else 0
        if count:
            # Not a lightweight ``DELETE FROM``: it only masks the rows in the table, and reads
            # served by the ``by_listed`` projection still saw them (chDB 26.9, with
            # ``lightweight_mutation_projection_mode = 'rebuild'`` too), so a deleted version
            # could outrank or revive an event in the sync's reads. A mutation rewrites the
            # parts, projection included (measured: about as fast here).
            await self._client.command(
                f"ALTER TABLE {self._table} DELETE WHERE schedule_id IN ({where}) "
                "SETTINGS mutations_sync = 2",
                params,
            )
        return count

    async def rekey_page(self, cursor: str, count: int) -> tuple[str, RekeyPage]:
        """One step of a key rotation: of up to ``count`` events after id ``cursor``, write a
        new version of those not sealed with their tenant's key now (re-sealed on write), and
        of those failed as undecryptable that the ring opens again (pending again). Returns the
        next cursor ("" when done). The new version is ``current + 1``: a user's cancel or
        reschedule (``+ 2``) always wins over it."""
        cipher = self._cipher
        if cipher is None:
            raise ValueError("no key ring configured")
        heads = await self._client.query(
            "SELECT schedule_id, entity_type, substring(body, 1, 128) AS head, headers, "
            f"CAST(status, 'String'), last_error FROM {self._table} FINAL "
            "WHERE schedule_id > {after:String} ORDER BY schedule_id LIMIT {n:UInt32}"
            + _FINAL_SETTINGS,
            {"after": cursor, "n": count},
            column_formats={"head": "bytes"},
        )
        page = RekeyPage(scanned=len(heads))
        stale = [
            str(sid)
            for sid, entity, head, headers, status, error in heads
            if (status == EventStatus.FAILED and str(error).startswith("undecryptable"))
            or headers != SEALED_HEADERS
            or _key_id_or_none(head) != cipher.ring.key_id_for(entity)
        ]
        now = utc_now()
        rows: list[_Row] = []
        for row in (await self._current(stale)).values():
            event = row.event
            if row.sealed is not None:
                page.unreadable += 1
                continue
            if event.status is EventStatus.FAILED and (event.last_error or "").startswith(
                "undecryptable"
            ):
                event = replace(event, status=EventStatus.PENDING, last_error=None, updated_at=now)
                page.restored += 1
            else:
                page.rekeyed += 1
            rows.append(self._next(row, event, 1))
        await self._write(rows)
        return (str(heads[-1][0]) if len(heads) == count else ""), page

    async def counts(self) -> dict[str, int]:
        """Events per status (every status present, 0 when none)."""
        rows = await self._client.query(
            f"SELECT CAST(status, 'String'), count() FROM {self._table} FINAL GROUP BY status"
            + _FINAL_SETTINGS
        )
        out = {status.value: 0 for status in EventStatus}
        out.update({str(r[0]): int(r[1]) for r in rows})
        return out

    async def next_due(self) -> datetime | None:
        """Due time of the earliest pending event, or None."""
        rows = await self._client.query(
            f"SELECT minOrNull(toUnixTimestamp64Micro(scheduled_at)) FROM {self._table} FINAL "
            "WHERE status = 'pending'" + _FINAL_SETTINGS
        )
        if not rows or rows[0][0] is None:
            return None
        return from_epoch_us(int(rows[0][0]))

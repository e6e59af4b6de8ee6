"""The long-term tier on ClickHouse: ``event_schedules`` as versioned rows.

Every change is a new row of the event with a higher ``version``; reads take the newest
version with ``FINAL`` (schema and measurements: ``migrations``).

Versions and the sync race (the protocol the scheduler service follows):

* ``insert`` writes version 1.
* User actions — :meth:`cancel`, :meth:`reschedule`, :meth:`mark_status` — read the current
  version ``c`` and write ``c + 2``.
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
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, Protocol

import orjson
import pyarrow as pa

from delayline.adapters.clickhouse.migrations import EVENTS_TABLE
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
    "last_error, version, toUnixTimestamp64Micro(retain_from)"
)
_TS = pa.timestamp("us", tz="UTC")
_ARROW_SCHEMA = pa.schema(
    [
        ("schedule_id", pa.string()),
        ("topic", pa.string()),
        ("entity_type", pa.string()),
        ("action", pa.string()),
        ("body", pa.string()),
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
    ]
)


class _Client(Protocol):
    database: str

    async def query(self, sql: str, parameters: Any = None) -> Sequence[Sequence[Any]]: ...

    async def command(self, sql: str, parameters: Any = None) -> Any: ...

    async def insert_arrow(self, table: str, data: pa.Table) -> None: ...


class _Row:
    """One stored version: the event plus its ``version`` and ``retain_from``."""

    __slots__ = ("event", "retain_from", "version")

    def __init__(self, event: ScheduledEvent, version: int, retain_from: datetime) -> None:
        self.event = event
        self.version = version
        self.retain_from = retain_from


def _decode(row: Sequence[Any]) -> _Row:
    event = ScheduledEvent(
        schedule_id=row[0],
        topic=row[1],
        entity_type=row[2],
        action=row[3],
        body=row[4],
        correlation_id=row[5],
        headers=orjson.loads(row[6]) if row[6] else {},
        scheduled_at=from_epoch_us(int(row[7])),
        max_delay_seconds=int(row[8]),
        priority=int(row[9]),
        status=EventStatus(row[10]),
        created_at=from_epoch_us(int(row[11])),
        updated_at=from_epoch_us(int(row[12])),
        attempts=int(row[13]),
        last_error=row[14] or None,
    )
    return _Row(event, int(row[15]), from_epoch_us(int(row[16])))


def _to_arrow(rows: Sequence[_Row]) -> pa.Table:
    events = [r.event for r in rows]
    return pa.Table.from_pydict(
        {
            "schedule_id": [e.schedule_id for e in events],
            "topic": [e.topic for e in events],
            "entity_type": [e.entity_type for e in events],
            "action": [e.action for e in events],
            "body": [e.body for e in events],
            "correlation_id": [e.correlation_id for e in events],
            "headers": [
                orjson.dumps(dict(e.headers)).decode() if e.headers else "" for e in events
            ],
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
        },
        schema=_ARROW_SCHEMA,
    )


def _chunks(items: Sequence[str], size: int = _LOOKUP_CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class ClickHouseLongTermStore:
    """:class:`delayline.ports.LongTermStore` on ``{database}.event_schedules``, plus what the
    sync, cleanup and stats need. The table must exist (``run_migrations``)."""

    def __init__(self, client: _Client) -> None:
        self._client = client
        self._table = f"{client.database}.{EVENTS_TABLE}"
        self._read: dict[str, _Row] = {}

    async def _current(self, ids: Sequence[str]) -> dict[str, _Row]:
        """The newest version of each stored id."""
        found: dict[str, _Row] = {}
        for chunk in _chunks(list(dict.fromkeys(ids))):
            rows = await self._client.query(
                f"SELECT {_COLUMNS} FROM {self._table} FINAL "
                "WHERE schedule_id IN {ids:Array(String)}" + _FINAL_SETTINGS,
                {"ids": list(chunk)},
            )
            for raw in rows:
                row = _decode(raw)
                found[row.event.schedule_id] = row
        return found

    async def _write(self, rows: Sequence[_Row]) -> None:
        if rows:
            await self._client.insert_arrow(self._table, _to_arrow(rows))

    @staticmethod
    def _next(row: _Row, event: ScheduledEvent, bump: int) -> _Row:
        """The version after ``row`` holding ``event``; ``retain_from`` never decreases."""
        retain = max(row.retain_from, event.scheduled_at, event.updated_at)
        return _Row(event, row.version + bump, retain)

    async def insert(self, events: Sequence[ScheduledEvent]) -> list[bool]:
        """Insert events whose schedule_id is not stored yet, in ONE Arrow insert.

        True where inserted; False for an id already stored or repeated earlier in ``events``.
        Two nodes inserting the same new id at the same moment may both write it: the rows
        collapse into one event (the later one wins), so it is still scheduled once.
        """
        ids = [e.schedule_id for e in events]
        existing: set[str] = set()
        for chunk in _chunks(list(dict.fromkeys(ids))):
            rows = await self._client.query(
                f"SELECT DISTINCT schedule_id FROM {self._table} "
                "WHERE schedule_id IN {ids:Array(String)}",
                {"ids": list(chunk)},
            )
            existing.update(str(r[0]) for r in rows)
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

    async def get(self, schedule_id: str) -> ScheduledEvent | None:
        """The newest version of the event, with its status; None if not stored."""
        row = (await self._current([schedule_id])).get(schedule_id)
        return row.event if row else None

    async def cancel(self, schedule_id: str) -> bool:
        """Mark a pending or queued event cancelled; True if it was one of those.

        A queued event sits in Redis as well: the caller must cancel it there too, after this
        (module docstring), and should do so whatever this returns.
        """
        row = (await self._current([schedule_id])).get(schedule_id)
        if row is None or row.event.status not in _LIVE:
            return False
        now = utc_now()
        event = row.event.with_status(EventStatus.CANCELLED, at=now)
        await self._write([self._next(row, event, 2)])
        return True

    async def reschedule(self, schedule_id: str, scheduled_at: datetime) -> bool:
        """Make a pending or queued event pending at ``scheduled_at``; True if it was one.

        A queued event was moved into Redis: the caller must cancel it there after this; the
        sync moves it again when its new time comes near.
        """
        row = (await self._current([schedule_id])).get(schedule_id)
        if row is None or row.event.status not in _LIVE:
            return False
        now = utc_now()
        event = replace(
            row.event, scheduled_at=scheduled_at, status=EventStatus.PENDING, updated_at=now
        )
        await self._write([self._next(row, event, 2)])
        return True

    async def due_before(self, until: datetime, limit: int) -> list[ScheduledEvent]:
        """Pending events due at or before ``until``, earliest first (higher priority first
        among equal times), at most ``limit``. Pass them to :meth:`mark_queued` unchanged."""
        rows = await self._client.query(
            f"SELECT {_COLUMNS} FROM {self._table} FINAL "
            "WHERE status = 'pending' "
            "AND scheduled_at <= fromUnixTimestamp64Micro({until:Int64}, 'UTC') "
            "ORDER BY scheduled_at, priority DESC, schedule_id LIMIT {limit:UInt32}"
            + _FINAL_SETTINGS,
            {"until": to_epoch_us(until), "limit": limit},
        )
        decoded = [_decode(r) for r in rows]
        # What mark_queued needs to write the next version without re-reading whole rows.
        self._read = {row.event.schedule_id: row for row in decoded}
        return [row.event for row in decoded]

    async def mark_queued(self, events: Sequence[ScheduledEvent]) -> list[str]:
        """Write ``queued`` for each event still exactly as :meth:`due_before` returned it.

        Returns the ids that changed since (cancelled, rescheduled, …) and were NOT marked:
        the sync must remove them from Redis. See the module docstring. An event another
        sync marked ``queued`` meanwhile is neither marked again nor returned.
        """
        read = {e.schedule_id: self._read.get(e.schedule_id) for e in events}
        if any(row is None or row.event != e for e, row in zip(events, read.values(), strict=True)):
            full = await self._current([e.schedule_id for e in events])  # not from due_before
            read = {e.schedule_id: full.get(e.schedule_id) for e in events}
        versions = await self._versions(list(read))
        now = utc_now()
        marked: list[_Row] = []
        changed: list[str] = []
        for seen in events:
            row = read.get(seen.schedule_id)
            current = versions.get(seen.schedule_id)
            if row is not None and current == (row.version + 1, EventStatus.QUEUED.value):
                continue  # another sync moved it meanwhile: its Redis copy is the right one
            if (
                row is None
                or current != (row.version, EventStatus.PENDING.value)
                or row.event.updated_at != seen.updated_at
                or row.event.scheduled_at != seen.scheduled_at
            ):
                changed.append(seen.schedule_id)
                continue
            event = row.event.with_status(EventStatus.QUEUED, at=now)
            marked.append(self._next(row, event, 1))
        await self._write(marked)
        return changed

    async def _versions(self, ids: Sequence[str]) -> dict[str, tuple[int, str]]:
        """The newest version number and status of each id: a light re-check (no bodies)."""
        found: dict[str, tuple[int, str]] = {}
        for chunk in _chunks(ids):
            rows = await self._client.query(
                f"SELECT schedule_id, version, CAST(status, 'String') FROM {self._table} FINAL "
                "WHERE schedule_id IN {ids:Array(String)}" + _FINAL_SETTINGS,
                {"ids": list(chunk)},
            )
            found.update({str(r[0]): (int(r[1]), str(r[2])) for r in rows})
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
        """Delete every version of events finished before ``older_than``; returns how many
        events. Live events are never touched."""
        where = (
            f"SELECT schedule_id FROM {self._table} FINAL WHERE status IN ({_TERMINAL_SQL}) "
            "AND updated_at < fromUnixTimestamp64Micro({before:Int64}, 'UTC')"
        )
        params = {"before": to_epoch_us(older_than)}
        rows = await self._client.query(f"SELECT count() FROM ({where}{_FINAL_SETTINGS})", params)
        count = int(rows[0][0]) if rows else 0
        if count:
            await self._client.command(
                f"DELETE FROM {self._table} WHERE schedule_id IN ({where})", params
            )
        return count

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

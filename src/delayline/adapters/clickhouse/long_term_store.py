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

How the sync finds due events without ``FINAL`` (whose cost grows with the whole table:
BENCHMARKS.md, longterm):
every row carries ``listed_at``, the minimum of its own ``scheduled_at`` and its predecessor's
(``rows.next_stamps``), and the ``by_listed`` projection keeps a copy of the
rows sorted by it (migration 2). A row due by ``t`` has ``listed_at <= t``, and so does every
later version of it, whatever it changes (a reschedule to a later time included). So the rows
with ``listed_at <= t`` hold, for every event due by ``t``, all its versions newer than its
oldest due one: the newest of those (highest ``version``, then the part with the higher block
number, as ``FINAL`` picks: ``versions.NEWEST``) is the event's current version.
:meth:`due_before` and :meth:`mark_queued` read only that prefix of the projection, never the
whole table.

The parts: ``rows`` (the Arrow row codec and the next-version rule), ``versions`` (current
versions in, new versions out, and how SQL is built), ``paging_sql`` and ``sync_pages`` (the
sync's side); this module is the store the services see.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace
from datetime import datetime

from delayline.adapters.clickhouse.rows import StoredRow, first_row, successor
from delayline.adapters.clickhouse.sync_pages import DuePage, SyncPages
from delayline.adapters.clickhouse.versions import (
    FINAL_SETTINGS,
    VersionedTable,
)
from delayline.adapters.encryption import SEALED_HEADERS, PayloadCipher, sealed_key_id
from delayline.clock import SystemClock
from delayline.domain.codec import UNREADABLE, UndecryptablePayload
from delayline.domain.events import (
    TERMINAL_STATUSES,
    EventStatus,
    ScheduledEvent,
    from_epoch_us,
    to_epoch_us,
)
from delayline.ports import ClickHouseQueries, Clock, RekeyPage

__all__ = ["ClickHouseLongTermStore", "DuePage", "same_content"]

_LIVE = frozenset({EventStatus.PENDING, EventStatus.QUEUED})
_TERMINAL = sorted(status.value for status in TERMINAL_STATUSES)
_BEFORE = "fromUnixTimestamp64Micro({before:Int64}, 'UTC')"
_FINISHED_IDS = (
    "SELECT schedule_id FROM {table} FINAL "
    f"WHERE (status IN {{terminal:Array(String)}} AND updated_at < {_BEFORE}) "
    f"OR (status = 'queued' AND scheduled_at < {_BEFORE})"
)
"""Events finished before ``before``, and events handed to Redis that were due before it."""
_COUNT_FINISHED_SQL = f"SELECT count() FROM ({_FINISHED_IDS}{FINAL_SETTINGS})"
_DELETE_FINISHED_SQL = (
    f"ALTER TABLE {{local_table}} DELETE WHERE schedule_id IN ({_FINISHED_IDS}) "
    "SETTINGS mutations_sync = 2"
)
_KEY_HEADS_SQL = (
    "SELECT schedule_id, entity_type, substring(body, 1, 128) AS head, headers, "
    "CAST(status, 'String'), last_error FROM {table} FINAL "
    "WHERE schedule_id > {after:String} ORDER BY schedule_id LIMIT {n:UInt32}" + FINAL_SETTINGS
)
"""A page of ids with what tells whether each is sealed with its tenant's key now."""
_COUNTS_SQL = (
    "SELECT CAST(status, 'String'), count() FROM {table} FINAL GROUP BY status" + FINAL_SETTINGS
)
_NEXT_DUE_SQL = (
    "SELECT minOrNull(toUnixTimestamp64Micro(scheduled_at)) FROM {table} FINAL "
    "WHERE status = 'pending'" + FINAL_SETTINGS
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


def _is_undecryptable(event: ScheduledEvent) -> bool:
    return event.status is EventStatus.FAILED and (event.last_error or "").startswith(UNREADABLE)


class ClickHouseLongTermStore:
    """:class:`delayline.ports.LongTermStore` on ``{database}.event_schedules``, plus what the
    sync, cleanup and stats need. The table must exist (``run_migrations``)."""

    def __init__(
        self,
        client: ClickHouseQueries,
        cipher: PayloadCipher | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._table = VersionedTable(client, cipher, clock or SystemClock())
        self._pages = SyncPages(self._table)

    def _now(self) -> datetime:
        return self._table.clock.now()

    async def _changed(
        self, rows: Collection[StoredRow], change: EventStatus
    ) -> dict[str, ScheduledEvent]:
        """Write the version after each of ``rows`` in status ``change`` (a user action:
        ``current + 2``); the events as they were before."""
        now = self._now()
        await self._table.write(
            [successor(row, row.event.with_status(change, at=now), 2) for row in rows]
        )
        return {row.event.schedule_id: row.event for row in rows}

    async def _live(self, ids: Sequence[str]) -> list[StoredRow]:
        """The current version of each id that is pending or queued."""
        current = await self._table.current(ids)
        return [row for row in current.values() if row.event.status in _LIVE]

    async def insert(self, events: Sequence[ScheduledEvent]) -> list[bool]:
        """Insert events whose schedule_id is not stored yet, in ONE Arrow insert.

        True where inserted; False for an id already stored or repeated earlier in ``events``.
        Two nodes inserting the same new id at the same moment may both write it: the rows
        collapse into one event (the later one wins), so it is still scheduled once.
        """
        existing = await self._table.known([e.schedule_id for e in events])
        fresh: list[StoredRow] = []
        inserted: list[bool] = []
        for event in events:
            new = event.schedule_id not in existing
            inserted.append(new)
            if new:
                existing.add(event.schedule_id)
                fresh.append(first_row(event))
        await self._table.write(fresh)
        return inserted

    async def known(self, ids: Sequence[str]) -> set[str]:
        """The ids stored here in any version (a light lookup: no ``FINAL``, no bodies)."""
        return await self._table.known(ids)

    async def upsert(self, events: Sequence[ScheduledEvent]) -> list[int]:
        """Make each event the current version of its id, in order, in ONE Arrow insert.

        Per event: 1 stored (the id was not here), 2 a new version over the current one
        (pending at its new time: a live event is replaced, a cancelled or finished one is
        scheduled again), 0 nothing written (the current version is pending with the same
        content: a redelivery). The new version keeps the row's ``created_at`` (all
        versions of an event share a partition).
        """
        current = await self._table.current([e.schedule_id for e in events])
        now = self._now()
        rows: list[StoredRow] = []
        codes: list[int] = []
        for event in events:
            row = current.get(event.schedule_id)
            if row is None:
                new = first_row(event)
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
                new = successor(row, version, 2, new_payload=True)
                codes.append(2)
            current[event.schedule_id] = new
            rows.append(new)
        await self._table.write(rows)
        return codes

    async def supersede(self, ids: Sequence[str]) -> set[str]:
        """Cancel the pending or queued version of each id that has one (the event now lives
        in the Redis tier in a newer version); returns those ids. One light lookup when none
        of the ids is stored here (the common case)."""
        stored = await self._table.known(ids)
        if not stored:
            return set()
        return set(await self._changed(await self._live(list(stored)), EventStatus.CANCELLED))

    async def get(self, schedule_id: str) -> ScheduledEvent | None:
        """The newest version of the event, with its status; None if not stored."""
        row = (await self._table.current([schedule_id])).get(schedule_id)
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
        before = await self._changed(await self._live(ids), EventStatus.CANCELLED)
        return {sid: event.status for sid, event in before.items()}

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
        now = self._now()
        moved = [
            successor(
                row,
                replace(
                    row.event.with_status(EventStatus.PENDING, at=now), scheduled_at=scheduled_at
                ),
                2,
            )
            for row in await self._live(ids)
        ]
        await self._table.write(moved)
        return {row.event.schedule_id: row.event for row in moved}

    async def due_before(self, until: datetime, limit: int) -> DuePage:
        """Pending events due at or before ``until``, earliest first (higher priority first
        among equal times), at most ``limit``. Pass the page to :meth:`mark_queued`."""
        return await self._pages.due_after(until, limit, None)

    async def due_after(
        self, until: datetime, limit: int, after: tuple[datetime, int, str] | None
    ) -> DuePage:
        """:meth:`due_before`, continuing after ``after`` (``sync_pages.SyncPages``)."""
        return await self._pages.due_after(until, limit, after)

    async def mark_queued(self, page: DuePage) -> list[str]:
        """Write ``queued`` for each event of ``page`` still as read; the ids that changed
        since, which the sync must take back out of Redis (module docstring)."""
        return await self._pages.mark_queued(page)

    async def mark_status(
        self, ids: Sequence[str], status: EventStatus, reason: str | None = None
    ) -> int:
        """Record ``status`` (e.g. a final one reported by the dispatcher) for each event not
        already finished; returns how many rows were written."""
        current = await self._table.current(ids)
        now = self._now()
        rows: list[StoredRow] = []
        for row in current.values():
            if row.event.status.is_terminal:
                continue
            event = replace(row.event, status=status, updated_at=now)
            if reason:
                event = replace(event, last_error=reason)
            rows.append(successor(row, event, 2))
        await self._table.write(rows)
        return len(rows)

    async def cleanup(self, older_than: datetime) -> int:
        """Delete every version of events finished before ``older_than``, and of events
        handed to Redis (``queued``) that were due before it; returns how many events.

        A ``queued`` row's outcome lives in Redis and the analytics table; without this the
        table, and the ``listed_at`` prefix every sync reads, would grow with all history.
        Live events are never touched."""
        params = {"before": to_epoch_us(older_than), "terminal": _TERMINAL}
        rows = await self._table.query(_COUNT_FINISHED_SQL, params)
        count = int(rows[0][0]) if rows else 0
        if count:
            # Not a lightweight ``DELETE FROM``: it only masks the rows in the table, and reads
            # served by the ``by_listed`` projection still saw them (chDB 26.9, with
            # ``lightweight_mutation_projection_mode = 'rebuild'`` too), so a deleted version
            # could outrank or revive an event in the sync's reads. A mutation rewrites the
            # parts, projection included.
            await self._table.client.command(self._table.sql(_DELETE_FINISHED_SQL), params)
        return count

    async def rekey_page(self, cursor: str, count: int) -> tuple[str, RekeyPage]:
        """One step of a key rotation: of up to ``count`` events after id ``cursor``, write a
        new version of those not sealed with their tenant's key now (re-sealed on write), and
        of those failed as undecryptable that the ring opens again (pending again). Returns the
        next cursor ("" when done). The new version is ``current + 1``: a user's cancel or
        reschedule (``+ 2``) always wins over it."""
        cipher = self._table.cipher
        if cipher is None:
            raise ValueError("no key ring configured")
        heads = await self._table.query(
            _KEY_HEADS_SQL, {"after": cursor, "n": count}, formats={"head": "bytes"}
        )
        page = RekeyPage(scanned=len(heads))
        stale = [
            str(sid)
            for sid, entity, head, headers, status, error in heads
            if (status == EventStatus.FAILED and str(error).startswith(UNREADABLE))
            or headers != SEALED_HEADERS
            or _key_id_or_none(head) != cipher.ring.key_id_for(entity)
        ]
        now = self._now()
        rows: list[StoredRow] = []
        for row in (await self._table.current(stale)).values():
            event = row.event
            if row.sealed is not None:
                page.unreadable += 1
                continue
            if _is_undecryptable(event):
                event = replace(event, status=EventStatus.PENDING, last_error=None, updated_at=now)
                page.restored += 1
            else:
                page.rekeyed += 1
            rows.append(successor(row, event, 1))
        await self._table.write(rows)
        return (str(heads[-1][0]) if len(heads) == count else ""), page

    async def counts(self) -> dict[str, int]:
        """Events per status (every status present, 0 when none)."""
        rows = await self._table.query(_COUNTS_SQL)
        out = {status.value: 0 for status in EventStatus}
        out.update({str(r[0]): int(r[1]) for r in rows})
        return out

    async def next_due(self) -> datetime | None:
        """Due time of the earliest pending event, or None."""
        rows = await self._table.query(_NEXT_DUE_SQL)
        if not rows or rows[0][0] is None:
            return None
        return from_epoch_us(int(rows[0][0]))

"""The sync's side of ``event_schedules``: read a page of due events, then mark it ``queued``.

:meth:`SyncPages.due_after` answers a :class:`DuePage`: the events, plus what
:meth:`SyncPages.mark_queued` needs to write their ``queued`` versions without reading them
again (the versions read, the rows as Arrow, the page's key range). The protocol, and why a
user's action always beats a ``queued`` write, is in ``long_term_store``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace
from datetime import datetime

import pyarrow as pa

from delayline.adapters.clickhouse.paging_sql import (
    CURRENT_IN_PAGE_SQL,
    DUE_SQL,
    END,
    PAGE_END_SQL,
    START,
    PageKey,
    bounds,
    page_key,
)
from delayline.adapters.clickhouse.rows import (
    ARROW_SCHEMA,
    TIMESTAMP,
    StoredRow,
    decode_rows,
    next_stamps,
    successor,
)
from delayline.adapters.clickhouse.versions import Stamp, VersionedTable
from delayline.domain.events import EventStatus, from_epoch_us, to_epoch_us


class DuePage:
    """Due events as one read found them, earliest first, for :meth:`SyncPages.mark_queued`.

    ``rows`` and ``table`` hold the same stored versions (``table`` row ``i`` is ``rows[i]``);
    ``lo`` and ``hi`` bound the page's keys, ``(lo, hi]``, as read by ``until_us``.
    """

    __slots__ = ("events", "hi", "lo", "rows", "table", "until_us")

    def __init__(
        self, rows: Sequence[StoredRow], table: pa.Table, until_us: int, lo: PageKey, hi: PageKey
    ) -> None:
        self.rows = list(rows)
        self.events = [row.event for row in self.rows]
        self.table = table
        self.until_us = until_us
        self.lo = lo
        self.hi = hi

    def without(self, ids: Collection[str]) -> DuePage:
        """This page less the events ``ids``: :meth:`SyncPages.mark_queued` leaves them be."""
        keep = [row.event.schedule_id not in ids for row in self.rows]
        rows = [row for row, kept in zip(self.rows, keep, strict=True) if kept]
        return DuePage(rows, self.table.filter(pa.array(keep)), self.until_us, self.lo, self.hi)


class SyncPages:
    """:meth:`due_after` and :meth:`mark_queued` on one :class:`VersionedTable`."""

    def __init__(self, table: VersionedTable) -> None:
        self._table = table

    async def due_after(
        self, until: datetime, limit: int, after: tuple[datetime, int, str] | None
    ) -> DuePage:
        """Pending events due at or before ``until``, earliest first (higher priority first
        among equal times), at most ``limit``, continuing after ``after``: the
        ``(scheduled_at, priority, schedule_id)`` of the last event of the previous page.

        Reads a page of ``limit`` pending rows at a time from the ``listed_at <= until``
        prefix: the rows of events already queued but not merged away yet are skipped a
        page at a time. An event whose payload cannot be opened is never moved: it is
        failed here instead, with the reason, its sealed payload kept.
        """
        until_us = to_epoch_us(until)
        lo: PageKey = START if after is None else (to_epoch_us(after[0]), -after[1], after[2])
        start = lo
        found: list[pa.Table] = []
        wanted = limit
        while wanted > 0:
            scan = wanted
            params = {"until": until_us, "scan": scan, **bounds(lo, END)}
            count, end = (await self._table.query(PAGE_END_SQL, params))[0]
            if not count:
                break
            hi: PageKey = (int(end[0]), int(end[1]), str(end[2]))
            table = await self._table.read(
                DUE_SQL, {"until": until_us, "limit": wanted, **bounds(lo, hi)}
            )
            found.append(table)
            wanted -= table.num_rows
            if count < scan:
                break  # nothing pending after hi
            lo = hi
        table = pa.concat_tables(found) if found else ARROW_SCHEMA.empty_table()
        rows = decode_rows(table, self._table.cipher)
        readable = [row.sealed is None for row in rows]
        if not all(readable):
            now = self._table.clock.now()
            await self._table.write(
                [
                    successor(r, replace(r.event, status=EventStatus.FAILED, updated_at=now), 2)
                    for r, ok in zip(rows, readable, strict=True)
                    if not ok
                ]
            )
            rows = [r for r, ok in zip(rows, readable, strict=True) if ok]
            table = table.filter(pa.array(readable))
        last = page_key(rows[-1].event) if rows else start
        return DuePage(rows, table, until_us, start, last)

    async def mark_queued(self, page: DuePage) -> list[str]:
        """Write ``queued`` for each event of ``page`` still exactly as it was read.

        Returns the ids that changed since (cancelled, rescheduled, …) and were NOT marked:
        the sync must remove them from Redis. An event another sync marked ``queued``
        meanwhile is neither marked again nor returned.
        """
        if not page.rows:
            return []
        current = await self._current_in_page(page)
        # A merge may have replaced a pending row read by a newer version (maybe another
        # sync's ``queued``, whose Redis copy must stay): look those few up by id.
        missing = [
            row.event.schedule_id for row in page.rows if row.event.schedule_id not in current
        ]
        if missing:
            current.update(await self._table.newest(missing, from_epoch_us(page.until_us)))
        marked: list[bool] = []
        changed: list[str] = []
        for row in page.rows:
            now = current.get(row.event.schedule_id)
            unchanged = (
                row.version,
                EventStatus.PENDING.value,
                row.event.due_us,
                to_epoch_us(row.event.updated_at),
            )
            if now is not None and now[:2] == (row.version + 1, EventStatus.QUEUED.value):
                marked.append(False)  # another sync moved it: its Redis copy is the right one
            elif now != unchanged:
                marked.append(False)
                changed.append(row.event.schedule_id)
            else:
                marked.append(True)
        await self._write_queued(page, marked)
        return changed

    async def _write_queued(self, page: DuePage, marked: list[bool]) -> None:
        """The ``queued`` version of each row of ``page`` marked True: the read table, its
        status, ``updated_at`` and version stamps replaced column by column."""
        rows = [row for row, chosen in zip(page.rows, marked, strict=True) if chosen]
        if not rows:
            return
        now = self._table.clock.now()
        stamps = [next_stamps(row, row.event.scheduled_at, now, 1) for row in rows]
        table = page.table.filter(pa.array(marked))
        new = {
            "status": pa.repeat(pa.scalar(EventStatus.QUEUED.value), len(rows)),
            "updated_at": pa.repeat(pa.scalar(now, type=TIMESTAMP), len(rows)),
            "version": pa.array([s[0] for s in stamps], pa.uint64()),
            "retain_from": pa.array([s[1] for s in stamps], TIMESTAMP),
            "listed_at": pa.array([s[2] for s in stamps], TIMESTAMP),
        }
        for name, column in new.items():
            index = table.schema.get_field_index(name)
            table = table.set_column(index, ARROW_SCHEMA.field(name), column)
        await self._table.insert(table)

    async def _current_in_page(self, page: DuePage) -> dict[str, Stamp]:
        """The current :data:`~versions.Stamp` of the events of ``page``, found by the page's
        key range: no id list to send. Every event read still has a row there unless a
        newer version replaced it in a merge; then it is missing here."""
        rows = await self._table.query(
            CURRENT_IN_PAGE_SQL, {"until": page.until_us, **bounds(page.lo, page.hi)}
        )
        return {
            str(sid): (int(newest[0]), str(cur[0]), int(cur[1]), int(cur[3]))
            for sid, newest, cur in rows
        }

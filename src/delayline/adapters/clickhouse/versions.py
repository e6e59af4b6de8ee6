"""Reading and writing versions of ``event_schedules`` rows: the pieces CRUD and the sync share.

Which version is current: the one with the highest ``version``, and of equal versions the one
in the part with the higher block number (the later insert), as ``FINAL`` and
``ReplacingMergeTree`` pick. :data:`NEWEST` is that rule in SQL; every query that picks a
current version without ``FINAL`` orders or aggregates by it.

SQL is built one way: each statement is a constant in which ``{table}`` (and, for an
``ALTER``, ``{local_table}``: the table holding this node's rows) are the only names Python
fills in (:meth:`VersionedTable.sql`, from validated identifiers); every value is a
server-side ``{name:Type}`` parameter.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import pyarrow as pa

from delayline.adapters.clickhouse.cluster_ddl import local_table
from delayline.adapters.clickhouse.migrations import EVENTS_TABLE
from delayline.adapters.clickhouse.rows import (
    SELECT_COLUMNS,
    StoredRow,
    as_stored,
    decode_rows,
    encode_rows,
)
from delayline.adapters.encryption import PayloadCipher
from delayline.domain.events import to_epoch_us
from delayline.ports import ClickHouseQueries, Clock

BLOCK = "toUInt64(splitByChar('_', _part)[2])"
"""The first block number of the row's part."""
NEWEST = f"(version, {BLOCK})"
"""A row's rank among the versions of its event: the version, then :data:`BLOCK`. The
highest is the current version."""
UNTIL = "fromUnixTimestamp64Micro({until:Int64}, 'UTC')"
"""The ``until`` parameter (epoch µs) as a time."""
FINAL_SETTINGS = " SETTINGS do_not_merge_across_partitions_select_final = 1"
"""Ends a ``FINAL`` read. All versions of an event share a partition (``created_at`` never
changes), so ``FINAL`` need not merge across partitions: safe, and faster."""
LOOKUP_CHUNK = 50_000
"""Ids per ``IN`` lookup. Random ids touch every granule of the sort key, so each lookup
scans the id column once: few big lookups beat many small ones."""

_CURRENT_SQL = (
    f"SELECT {SELECT_COLUMNS} FROM {{table}} PREWHERE schedule_id IN {{ids:Array(String)}} "
    f"ORDER BY schedule_id, {NEWEST} DESC LIMIT 1 BY schedule_id"
)
"""The current version of each id, picked without ``FINAL`` (which reads every column of
each granule the ids fall in): this reads the id column there and the rest only where an id
matched."""
_NEWEST_SQL = (
    "SELECT schedule_id, version, CAST(status, 'String'), "
    "toUnixTimestamp64Micro(scheduled_at), toUnixTimestamp64Micro(updated_at) "
    f"FROM {{table}} WHERE listed_at <= {UNTIL} AND schedule_id IN {{ids:Array(String)}} "
    f"ORDER BY schedule_id, {NEWEST} DESC LIMIT 1 BY schedule_id"
)
_KNOWN_SQL = "SELECT DISTINCT schedule_id FROM {table} WHERE schedule_id IN {ids:Array(String)}"

Stamp = tuple[int, str, int, int]
"""An event's current ``(version, status, scheduled_at µs, updated_at µs)``."""


def chunks(items: Sequence[str], size: int = LOOKUP_CHUNK) -> Iterator[Sequence[str]]:
    """``items`` in slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


class VersionedTable:
    """``{database}.event_schedules`` through one client: current versions in, new ones out."""

    def __init__(
        self, client: ClickHouseQueries, cipher: PayloadCipher | None, clock: Clock
    ) -> None:
        self.client = client
        self.name = f"{client.database}.{EVENTS_TABLE}"
        self.local_name = local_table(self.name, client.cluster)
        self.cipher = cipher
        self.clock = clock

    def sql(self, template: str) -> str:
        """``template`` with ``{table}`` and ``{local_table}`` named (module docstring)."""
        return template.replace("{table}", self.name).replace("{local_table}", self.local_name)

    async def query(
        self,
        template: str,
        params: Mapping[str, Any] | None = None,
        formats: Mapping[str, str] | None = None,
    ) -> Sequence[Sequence[Any]]:
        """Rows of a statement that returns a few plain columns (``formats``: clickhouse-connect
        column formats, e.g. ``{"head": "bytes"}`` for a String read as its exact bytes)."""
        return await self.client.query(self.sql(template), params, column_formats=formats)

    async def read(self, template: str, params: Mapping[str, Any]) -> pa.Table:
        """A statement selecting :data:`~rows.SELECT_COLUMNS`, as stored rows in Arrow."""
        return as_stored(await self.client.query_arrow(self.sql(template), params))

    async def current(self, ids: Sequence[str]) -> dict[str, StoredRow]:
        """The current version of each stored id."""
        found: dict[str, StoredRow] = {}
        for chunk in chunks(list(dict.fromkeys(ids))):
            table = await self.read(_CURRENT_SQL, {"ids": list(chunk)})
            found.update((r.event.schedule_id, r) for r in decode_rows(table, self.cipher))
        return found

    async def newest(self, ids: Sequence[str], due_by: datetime) -> dict[str, Stamp]:
        """The current :data:`Stamp` of each id due by ``due_by`` when read, from the
        ``listed_at`` prefix only (``long_term_store``): a light re-check without ``FINAL``
        and without bodies."""
        found: dict[str, Stamp] = {}
        for chunk in chunks(ids):
            rows = await self.query(_NEWEST_SQL, {"ids": list(chunk), "until": to_epoch_us(due_by)})
            found.update({str(r[0]): (int(r[1]), str(r[2]), int(r[3]), int(r[4])) for r in rows})
        return found

    async def known(self, ids: Sequence[str]) -> set[str]:
        """The ids stored in any version (a light lookup: no ``FINAL``, no bodies)."""
        found: set[str] = set()
        for chunk in chunks(list(dict.fromkeys(ids))):
            found.update(str(r[0]) for r in await self.query(_KNOWN_SQL, {"ids": list(chunk)}))
        return found

    async def write(self, rows: Sequence[StoredRow]) -> None:
        """Insert ``rows`` (new versions) in one Arrow insert."""
        if rows:
            await self.insert(encode_rows(rows, self.cipher))

    async def insert(self, table: pa.Table) -> None:
        """Insert a table of :data:`~rows.ARROW_SCHEMA` as it is."""
        await self.client.insert_arrow(self.name, table)

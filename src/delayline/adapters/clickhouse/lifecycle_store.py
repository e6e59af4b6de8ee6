"""ClickHouse adapter of the lifecycle history: ``event_lifecycle`` rows in, histories out.

Writes are one Arrow insert per batch. An event's history is a point read on the sort key
``(schedule_id, at)``; a search by business key reads the ids from the ``by_correlation``
projection, then the matching events' rows by sort key, and folds each event's status in SQL
so filters and paging apply to events, not rows (schema: ``migrations``, migration 3).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from delayline.adapters.clickhouse.migrations import LIFECYCLE_TABLE
from delayline.adapters.encryption import PayloadCipher, open_columns, seal_columns
from delayline.domain.codec import UndecryptablePayload
from delayline.domain.events import ScheduledEvent, from_epoch_us
from delayline.domain.outcomes import TRANSITION_STATUS, EventFilter, LifecycleEntry, Transition
from delayline.ports import ClickHouseQueries

_CHUNK_ROWS = 500
_TS = pa.timestamp("us", tz="UTC")
_SCHEMA = pa.schema(
    [
        ("schedule_id", pa.string()),
        ("at", _TS),
        ("transition", pa.string()),
        ("node", pa.string()),
        ("detail", pa.string()),
        ("kafka_partition", pa.int32()),
        ("kafka_offset", pa.int64()),
        ("has_snapshot", pa.uint8()),
        ("topic", pa.string()),
        ("entity_type", pa.string()),
        ("action", pa.string()),
        ("correlation_id", pa.string()),
        ("body", pa.binary()),
        ("headers", pa.string()),
        ("scheduled_at", _TS),
        ("max_delay_seconds", pa.uint32()),
        ("priority", pa.int32()),
        ("created_at", _TS),
        ("attempts", pa.uint32()),
        ("last_error", pa.string()),
        ("retain_from", _TS),
    ]
)
_COLUMNS = (
    "schedule_id, toUnixTimestamp64Micro(at), transition, node, detail, kafka_partition, "
    "kafka_offset, has_snapshot, topic, entity_type, action, correlation_id, body, headers, "
    "toUnixTimestamp64Micro(scheduled_at), max_delay_seconds, priority, "
    "toUnixTimestamp64Micro(created_at), attempts, last_error"
)
_BODY_AS_BYTES = {"body": "bytes"}
"""Bodies are opaque bytes: read them as such, not decoded as UTF-8."""
_TERMINAL_TRANSITIONS = sorted(t.value for t, s in TRANSITION_STATUS.items() if s.is_terminal)
_STATUS_OF = "transform({t}, {{names:Array(String)}}, {{statuses:Array(String)}}, '')"
_FOLDED = (
    "SELECT schedule_id, "
    "if(countIf(transition IN {terminal:Array(String)}) > 0, "
    "   argMinIf(transition, at, transition IN {terminal:Array(String)}), "
    "   argMax(transition, at)) AS last_transition, "
    f"{_STATUS_OF.format(t='last_transition')} AS status, "
    "argMaxIf(scheduled_at, at, has_snapshot = 1) AS due "
    "FROM {table} WHERE schedule_id IN ({ids}) AND schedule_id > {after:String} "
    "GROUP BY schedule_id HAVING {having} ORDER BY schedule_id LIMIT {limit:UInt32}"
)
"""One row per event matching the filters: its status as :func:`fold_history` derives it
(the first terminal transition, else the latest one) and its current due time."""


class ClickHouseLifecycleStore:
    """``{database}.event_lifecycle``: one row per transition (``run_migrations`` creates it)."""

    def __init__(self, client: ClickHouseQueries, cipher: PayloadCipher | None = None) -> None:
        self._client = client
        self._cipher = cipher
        self._table = f"{client.database}.{LIFECYCLE_TABLE}"

    async def write_entries(self, entries: Sequence[LifecycleEntry]) -> None:
        """Insert ``entries`` as one batch; nothing for an empty batch."""
        if not entries:
            return
        chunks = []
        for start in range(0, len(entries), _CHUNK_ROWS):
            chunks.append(to_arrow(entries[start : start + _CHUNK_ROWS], self._cipher))
            await asyncio.sleep(0)  # building Arrow columns: never hold the loop for long
        table = chunks[0] if len(chunks) == 1 else pa.concat_tables(chunks)
        await self._client.insert_arrow(self._table, table)

    async def history(self, schedule_id: str) -> list[LifecycleEntry]:
        """Every recorded transition of one event, oldest first."""
        rows = await self._client.query(
            f"SELECT {_COLUMNS} FROM {self._table} WHERE schedule_id = {{id:String}} ORDER BY at",
            {"id": schedule_id},
            column_formats=_BODY_AS_BYTES,
        )
        return [_decode(row, self._cipher) for row in rows]

    async def histories(self, ids: Sequence[str]) -> dict[str, list[LifecycleEntry]]:
        """The transitions of each of ``ids``, oldest first."""
        out: dict[str, list[LifecycleEntry]] = {i: [] for i in ids}
        if not ids:
            return out
        rows = await self._client.query(
            f"SELECT {_COLUMNS} FROM {self._table} WHERE schedule_id IN {{ids:Array(String)}} "
            "ORDER BY schedule_id, at",
            {"ids": list(ids)},
            column_formats=_BODY_AS_BYTES,
        )
        for row in rows:
            entry = _decode(row, self._cipher)
            out[entry.schedule_id].append(entry)
        return out

    async def find(self, match: EventFilter, *, after: str = "", limit: int = 100) -> list[str]:
        """Ids of events matching ``match``, in id order, after the id ``after`` (the paging
        cursor: stable whatever is written meanwhile), at most ``limit``."""
        where = ["1"]  # a condition beyond the projection's columns would keep it unused
        params: dict[str, Any] = {
            "after": after,
            "limit": limit,
            "terminal": _TERMINAL_TRANSITIONS,
            "names": [t.value for t in TRANSITION_STATUS],
            "statuses": [s.value for s in TRANSITION_STATUS.values()],
        }
        for name in ("correlation_id", "entity_type", "action", "topic"):
            value = getattr(match, name)
            if value is not None:
                where.append(f"{name} = {{{name}:String}}")
                params[name] = value
        having = ["1"]
        if match.statuses:
            having.append("status IN {wanted:Array(String)}")
            params["wanted"] = sorted(s.value for s in match.statuses)
        if match.due_after is not None:
            having.append("due >= {due_after:DateTime64(6, 'UTC')}")
            params["due_after"] = match.due_after
        if match.due_before is not None:
            having.append("due < {due_before:DateTime64(6, 'UTC')}")
            params["due_before"] = match.due_before
        ids = f"SELECT schedule_id FROM {self._table} WHERE {' AND '.join(where)}"
        sql = _FOLDED.replace("{table}", self._table).replace("{ids}", ids)
        rows = await self._client.query(sql.replace("{having}", " AND ".join(having)), params)
        return [str(row[0]) for row in rows]


def to_arrow(entries: Sequence[LifecycleEntry], cipher: PayloadCipher | None = None) -> pa.Table:
    """The ``event_lifecycle`` rows of ``entries`` (an entry without a snapshot: zero values);
    with ``cipher``, snapshots' bodies and headers sealed."""
    cols: dict[str, list[Any]] = {name: [] for name in _SCHEMA.names}
    for entry in entries:
        event = entry.event
        cols["schedule_id"].append(entry.schedule_id)
        cols["at"].append(entry.at)
        cols["transition"].append(entry.transition.value)
        cols["node"].append(entry.node)
        cols["detail"].append(entry.detail)
        cols["kafka_partition"].append(entry.partition)
        cols["kafka_offset"].append(entry.offset)
        cols["has_snapshot"].append(int(event is not None))
        cols["topic"].append(event.topic if event else "")
        cols["entity_type"].append(event.entity_type if event else "")
        cols["action"].append(event.action if event else "")
        cols["correlation_id"].append(event.correlation_id if event else "")
        body, headers = (
            seal_columns(cipher, event.schedule_id, event.entity_type, event.headers, event.body)
            if event
            else (b"", "")
        )
        cols["body"].append(body)
        cols["headers"].append(headers)
        cols["scheduled_at"].append(event.scheduled_at if event else entry.at)
        cols["max_delay_seconds"].append(event.max_delay_seconds if event else 0)
        cols["priority"].append(event.priority if event else 0)
        cols["created_at"].append(event.created_at if event else entry.at)
        cols["attempts"].append(event.attempts if event else 0)
        cols["last_error"].append((event.last_error or "") if event else "")
        cols["retain_from"].append(max(entry.at, event.scheduled_at) if event else entry.at)
    return pa.Table.from_pydict(cols, schema=_SCHEMA)


def _decode(row: Sequence[Any], cipher: PayloadCipher | None = None) -> LifecycleEntry:
    transition = Transition(row[2])
    event = None
    if row[7]:
        try:
            headers, body = open_columns(cipher, row[0], row[12], row[13])
            error = row[19] or None
        except UndecryptablePayload as exc:  # shown without its payload, saying why
            headers, body, error = {}, b"", exc.reason
        event = ScheduledEvent(
            schedule_id=row[0],
            topic=row[8],
            entity_type=row[9],
            action=row[10],
            body=body,
            correlation_id=row[11],
            headers=headers,
            scheduled_at=from_epoch_us(int(row[14])),
            max_delay_seconds=int(row[15]),
            priority=int(row[16]),
            status=TRANSITION_STATUS[transition],
            created_at=from_epoch_us(int(row[17])),
            updated_at=from_epoch_us(int(row[1])),
            attempts=int(row[18]),
            last_error=error,
        )
    return LifecycleEntry(
        schedule_id=row[0],
        transition=transition,
        at=from_epoch_us(int(row[1])),
        event=event,
        node=row[3],
        detail=row[4],
        partition=None if row[5] is None else int(row[5]),
        offset=None if row[6] is None else int(row[6]),
    )

"""ClickHouse adapter of the audit trail: ``audit_log`` rows in and out (migration 4)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import pyarrow as pa

from delayline.adapters.clickhouse.migrations import AUDIT_TABLE
from delayline.domain.audit import AuditEntry, AuditQuery
from delayline.domain.events import from_epoch_us, to_epoch_us
from delayline.ports import ClickHouseQueries

_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("at", pa.timestamp("us", tz="UTC")),
        ("key_id", pa.string()),
        ("tenant", pa.string()),
        ("action", pa.string()),
        ("parameters", pa.string()),
        ("outcome", pa.string()),
    ]
)


class ClickHouseAuditStore:
    """``{database}.audit_log`` (``run_migrations`` creates it)."""

    def __init__(self, client: ClickHouseQueries) -> None:
        self._client = client
        self._table = f"{client.database}.{AUDIT_TABLE}"

    async def write_entries(self, entries: Sequence[AuditEntry]) -> None:
        """Insert ``entries`` as one batch; nothing for an empty batch."""
        if not entries:
            return
        columns = {
            "id": [e.id for e in entries],
            "at": [e.at for e in entries],
            "key_id": [e.key_id for e in entries],
            "tenant": [e.tenant for e in entries],
            "action": [e.action for e in entries],
            "parameters": [orjson.dumps(e.parameters).decode() for e in entries],
            "outcome": [e.outcome for e in entries],
        }
        await self._client.insert_arrow(self._table, pa.table(columns, schema=_SCHEMA))

    async def find(self, query: AuditQuery) -> list[AuditEntry]:
        """Entries with ``since <= at < until`` (and the key and action when given), in id
        order after ``query.after``, at most ``query.limit``."""
        where = [
            "at >= fromUnixTimestamp64Micro({since:Int64}, 'UTC')",
            "at < fromUnixTimestamp64Micro({until:Int64}, 'UTC')",
            "id > {after:String}",
        ]
        params: dict[str, Any] = {
            "since": to_epoch_us(query.since),
            "until": to_epoch_us(query.until),
            "after": query.after,
            "limit": query.limit,
        }
        if query.key_id is not None:
            where.append("key_id = {key_id:String}")
            params["key_id"] = query.key_id
        if query.action is not None:
            where.append("action = {action:String}")
            params["action"] = query.action
        rows = await self._client.query(
            "SELECT id, toUnixTimestamp64Micro(at), key_id, tenant, action, parameters, outcome "
            f"FROM {self._table} WHERE {' AND '.join(where)} ORDER BY id LIMIT {{limit:UInt32}}",
            params,
        )
        return [
            AuditEntry(
                at=from_epoch_us(int(row[1])),
                key_id=str(row[2]),
                tenant=str(row[3]),
                action=str(row[4]),
                parameters=dict(orjson.loads(row[5])),
                outcome=str(row[6]),
                id=str(row[0]),
            )
            for row in rows
        ]

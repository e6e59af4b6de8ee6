"""The ClickHouse client as the ClickHouse adapters use it (server or embedded chDB)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # Arrow only in the signatures: importing the ports stays cheap
    import pyarrow as pa


class ClickHouseQueries(Protocol):
    """SQL with bound parameters, Arrow in and out, on one database."""

    database: str
    cluster: str
    """The cluster DDL runs on (``ON CLUSTER``), or empty on a single node."""

    async def query(
        self,
        sql: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        column_formats: Mapping[str, str] | None = None,
    ) -> Sequence[Sequence[Any]]:
        """Run a SELECT; its rows."""
        ...

    async def query_arrow(self, sql: str, parameters: Mapping[str, Any] | None = None) -> pa.Table:
        """Run a SELECT; its result as an Arrow table."""
        ...

    async def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> Any:
        """Run a statement that returns no rows (DDL, ALTER, lightweight DELETE)."""
        ...

    async def insert_arrow(self, table: str, data: pa.Table) -> None:
        """Insert an Arrow table into ``table``."""
        ...

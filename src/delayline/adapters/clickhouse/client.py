"""One ClickHouse connection for the process, embedded (chDB) or a server, behind async calls.

``clickhouse-connect`` speaks to both: ``chdb:///abs/path`` runs the real engine in-process,
``http(s)://user:pass@host:8123/db`` talks to a server. Its async client refuses chDB, and a
chDB session serializes its queries anyway, so every blocking call runs on ONE dedicated
executor thread: the event loop never blocks, and calls keep their order.

chDB facts that shape this: one process may own a data folder, and one process can
open only one folder, ever; closing the last connection shuts the engine down. So the
connection is opened once by :meth:`ClickHouseClient.start` and kept until :meth:`stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

import pyarrow as pa

_T = TypeVar("_T")
_DEFAULT_DATABASE = "delayline"


class ClickHouseFolderInUseError(RuntimeError):
    """Another process owns the embedded ClickHouse (chDB) data folder."""

    def __init__(self, folder: str) -> None:
        super().__init__(
            f"the embedded ClickHouse data folder {folder} is in use by another process "
            "(another delayline on the same data directory?); stop it, or give this one its "
            "own SCHEDULES_DATA_DIR or SCHEDULES_CLICKHOUSE_DSN"
        )
        self.folder = folder


def chdb_folder(dsn: str) -> str | None:
    """The data folder of a ``chdb:///abs/path`` DSN; None for other DSNs (or in-memory)."""
    parsed = urlparse(dsn)
    if parsed.scheme != "chdb" or parsed.netloc or not parsed.path:
        return None
    return os.path.realpath(unquote(parsed.path))


def _dsn_database(dsn: str) -> str | None:
    parsed = urlparse(dsn)
    if parsed.scheme == "chdb":
        return None  # the path of a chdb DSN is the folder, not a database
    name = unquote(parsed.path.strip("/"))
    return name or None


def _folder_locked_by_other(folder: str) -> bool:
    """Whether another process holds the engine's lock (``flock`` on ``<folder>/status``).

    Only asked after opening failed: if this process had the folder open, opening would have
    succeeded, so a held lock means another process.
    """
    status = Path(folder) / "status"
    if not status.exists():
        return False
    with status.open("rb") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    return False


def _validate_identifier(name: str, what: str = "database") -> str:
    if not name or not all(ch.isalnum() or ch == "_" for ch in name) or name[0].isdigit():
        raise ValueError(f"invalid ClickHouse {what} name {name!r}: use letters, digits and _")
    return name


class _Connection:
    """The process-wide pieces: the clickhouse-connect client and its one thread."""

    def __init__(self, dsn: str, settings: dict[str, Any]) -> None:
        self.dsn = dsn
        self.settings = settings
        self.executor: ThreadPoolExecutor | None = None
        self.client: Any = None

    def open(self) -> None:
        import clickhouse_connect
        from clickhouse_connect.driver.exceptions import ClickHouseError

        folder = chdb_folder(self.dsn)
        try:
            if folder is not None:
                Path(folder).mkdir(parents=True, exist_ok=True)
                self.client = clickhouse_connect.get_client(dsn=self.dsn, settings=self.settings)
            else:
                # Connect to ``default``: the target database may not exist yet. Parameters go
                # in the request body: an ``IN`` list of thousands of ids is too long for a URL.
                self.client = clickhouse_connect.get_client(
                    dsn=self.dsn,
                    database="default",
                    settings=self.settings,
                    autogenerate_session_id=False,
                    form_encode_query_params=True,
                )
        except ClickHouseError as exc:
            if folder is not None and (
                "Cannot lock file" in str(exc) or _folder_locked_by_other(folder)
            ):
                raise ClickHouseFolderInUseError(folder) from None
            raise

    def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
            self.client = None


class ClickHouseClient:
    """Async facade over one ``clickhouse-connect`` client, bound to one database.

    ``start()`` opens the connection and creates the database if needed; ``stop()`` closes
    it. Both are idempotent. SQL should name tables as ``{database}.table`` (``self.database``).

    ``cluster``: the ClickHouse cluster the schema lives on ("" for one server). Its inserts
    then go through ``Distributed`` tables in the foreground (``distributed_foreground_insert``),
    so a write is on its shard when the call returns and the next read sees it.
    """

    def __init__(self, dsn: str, database: str | None = None, cluster: str = "") -> None:
        self.dsn = dsn
        self.database = _validate_identifier(database or _dsn_database(dsn) or _DEFAULT_DATABASE)
        self.cluster = _validate_identifier(cluster, "cluster") if cluster else ""
        self._conn = _Connection(dsn, {"distributed_foreground_insert": 1} if cluster else {})
        self._owner = True

    @property
    def started(self) -> bool:
        """Whether the connection is open."""
        return self._conn.client is not None

    def with_database(self, database: str) -> ClickHouseClient:
        """A client on another database sharing this one's connection and thread.

        It needs no ``start()`` of its own beyond creating its database (``start()`` does that
        and nothing else), and its ``stop()`` leaves the shared connection open.
        """
        other = ClickHouseClient(self.dsn, database, self.cluster)
        other._conn = self._conn
        other._owner = False
        return other

    async def start(self) -> None:
        """Open the connection (once) and ``CREATE DATABASE IF NOT EXISTS``.

        Raises :class:`ClickHouseFolderInUseError` when another process owns the chDB folder.
        """
        conn = self._conn
        if conn.executor is None:
            conn.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        if conn.client is None:
            try:
                await self._run(conn.open)
            except BaseException:
                if self._owner:
                    await self.stop()
                raise
        await self.command(f"CREATE DATABASE IF NOT EXISTS {self.database}")

    async def stop(self) -> None:
        """Close the connection and its thread (no-op if not started or a derived client)."""
        conn = self._conn
        if not self._owner or conn.executor is None:
            return
        executor = conn.executor
        if conn.client is not None:
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        conn.executor = None
        executor.shutdown(wait=True)

    async def __aenter__(self) -> ClickHouseClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _run(self, fn: Callable[[], _T]) -> _T:
        executor = self._conn.executor
        if executor is None:
            raise RuntimeError("ClickHouseClient is not started")
        return await asyncio.get_running_loop().run_in_executor(executor, fn)

    def _client(self) -> Any:
        client = self._conn.client
        if client is None:
            raise RuntimeError("ClickHouseClient is not started")
        return client

    async def query(
        self,
        sql: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        column_formats: Mapping[str, str] | None = None,
    ) -> Sequence[Sequence[Any]]:
        """Run a SELECT with server-side ``{name:Type}`` parameters; its rows as tuples.

        ``column_formats`` as clickhouse-connect takes them, e.g. ``{"body": "bytes"}`` for a
        String column read as bytes instead of text."""
        params = dict(parameters or {})
        formats = dict(column_formats or {})
        result = await self._run(
            lambda: self._client().query(sql, parameters=params, column_formats=formats or None)
        )
        rows: Sequence[Sequence[Any]] = result.result_rows
        return rows

    async def query_arrow(self, sql: str, parameters: Mapping[str, Any] | None = None) -> pa.Table:
        """Run a SELECT; its result as an Arrow table (fast for many rows)."""
        params = dict(parameters or {})
        table: pa.Table = await self._run(
            lambda: self._client().query_arrow(sql, parameters=params)
        )
        return table

    async def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> Any:
        """Run a statement (DDL, INSERT … SELECT, DELETE …); its summary or scalar result."""
        params = dict(parameters or {})
        return await self._run(lambda: self._client().command(sql, parameters=params or None))

    async def insert_arrow(self, table: str, data: pa.Table) -> None:
        """Insert an Arrow table into ``table`` (qualified ``db.table``) in one batch."""
        if data.num_rows:
            await self._run(lambda: self._client().insert_arrow(table, data))

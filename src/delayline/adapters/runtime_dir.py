"""The infrastructure under one process: the data-directory lock, the embedded servers it
starts when no URL is set, and the runtime file that tells the CLI where they are.

The lock is taken only when this process keeps something in the data directory (an embedded
Valkey or Tansu, or the default chDB folder): processes whose servers are all external share
one data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from delayline.adapters.clickhouse.client import chdb_folder
from delayline.adapters.embedded import EmbeddedTansu, EmbeddedValkey, write_private
from delayline.settings import Settings

log = logging.getLogger(__name__)

RUNTIME_FILE = "runtime.json"


class DataDirInUseError(RuntimeError):
    """Another delayline process owns the data directory."""


@dataclass(frozen=True)
class Endpoints:
    """Where this process's servers are, and the embedded ones it started (if any)."""

    redis_url: str
    bootstrap_servers: str
    """Empty when this process runs no role that uses Kafka."""
    valkey: EmbeddedValkey | None = None
    tansu: EmbeddedTansu | None = None

    def signal_stop(self) -> None:
        """SIGTERM the embedded servers without waiting (an exit in a hurry)."""
        for server in (self.tansu, self.valkey):
            if server is not None:
                server.signal_stop()


def owns_data_dir(settings: Settings, *, kafka: bool) -> bool:
    """Whether this process keeps anything in the data directory, so must own it alone."""
    chdb = chdb_folder(settings.resolved_clickhouse_dsn)
    data_dir = settings.data_dir.resolve()
    return (
        settings.redis_url is None
        or (kafka and settings.kafka_bootstrap_servers is None)
        or (chdb is not None and Path(chdb).is_relative_to(data_dir))
    )


def data_dir_node_id(data_dir: Path) -> str:
    """The node id of the process that owns ``data_dir``: the host and a digest of the path."""
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:10]
    return f"{socket.gethostname()}-{digest}"


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold the data directory for this process (an exclusive ``flock`` on ``.lock``), or raise
    :class:`DataDirInUseError` before anything is touched."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = (data_dir / ".lock").open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise DataDirInUseError(
            f"the data directory {data_dir.resolve()} is in use by another delayline process; "
            "stop it, or give this one its own SCHEDULES_DATA_DIR"
        ) from None
    try:
        yield
    finally:
        handle.close()  # releases the lock


@contextlib.asynccontextmanager
async def infrastructure(settings: Settings, *, kafka: bool) -> AsyncIterator[Endpoints]:
    """The lock (when needed), then each embedded server whose URL is unset, then the runtime
    file; undone in the reverse order. ``kafka``: whether this process uses Kafka at all."""
    s = settings
    with contextlib.ExitStack() as locks:
        owner = owns_data_dir(s, kafka=kafka)
        if owner:
            locks.enter_context(data_dir_lock(s.data_dir))
        async with contextlib.AsyncExitStack() as stack:
            valkey = tansu = None
            if s.redis_url is None:
                valkey = EmbeddedValkey(s.data_dir / "valkey", appendfsync=s.redis_appendfsync)
                stack.push_async_callback(asyncio.to_thread, valkey.stop)
                redis_url = await asyncio.to_thread(valkey.start)
            else:
                redis_url = s.redis_url.get_secret_value()
            servers = ""
            if kafka and s.kafka_bootstrap_servers is None:
                tansu = EmbeddedTansu(log_path=s.data_dir / "tansu.log")
                stack.push_async_callback(asyncio.to_thread, tansu.stop)
                servers = await asyncio.to_thread(tansu.start)
            elif kafka and s.kafka_bootstrap_servers is not None:
                servers = s.kafka_bootstrap_servers
            endpoints = Endpoints(redis_url, servers, valkey, tansu)
            if owner:
                stack.enter_context(_runtime_file(s.data_dir, endpoints))
            yield endpoints


@contextlib.contextmanager
def _runtime_file(data_dir: Path, endpoints: Endpoints) -> Iterator[None]:
    """Tell the CLI in another terminal where the embedded servers are: no secret, and
    readable by this user only. The embedded Valkey's password is in its own 0600 file."""
    info: dict[str, Any] = {"bootstrap_servers": endpoints.bootstrap_servers}
    if endpoints.valkey is not None:
        info["redis_url"] = endpoints.valkey.address
        info["redis_password_file"] = str(endpoints.valkey.password_file)
    path = data_dir / RUNTIME_FILE
    write_private(path, json.dumps(info))
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


def read_runtime_file(data_dir: Path) -> dict[str, Any]:
    """What a running service wrote about its embedded servers (empty if none)."""
    try:
        return dict(json.loads((data_dir / RUNTIME_FILE).read_text()))
    except (OSError, ValueError):
        return {}

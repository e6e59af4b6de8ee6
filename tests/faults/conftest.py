"""Fixtures of the fault-injection suite: servers this suite may kill, the service as a
subprocess, and the table of figures printed at the end of the session."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from delayline.adapters.embedded import EmbeddedTansu, EmbeddedValkey, free_port
from tests.faults.harness import HealthWatcher, HttpLoad, ServiceProcess, TopicCollector
from tests.support import create_topics


@dataclass(frozen=True)
class Row:
    """One line of the reliability table."""

    scenario: str
    load: int
    faults: str
    bad_inputs: int
    lost: int
    duplicates: int
    health_s: float | None
    firing_s: float | None
    note: str = ""


ROWS_KEY = pytest.StashKey[list[Row]]()
COLUMNS = (
    "scenario",
    "load (events)",
    "faults injected",
    "bad inputs",
    "lost",
    "duplicates",
    "health 200 after (s)",
    "firing resumed after (s)",
    "note",
)


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def format_table(rows: list[Row]) -> list[str]:
    """The rows as a Markdown table (the same one docs/RELIABILITY.md shows)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(v) for v in asdict(row).values()) + " |")
    return lines


@pytest.fixture(scope="session")
def reliability_rows(request: pytest.FixtureRequest) -> list[Row]:
    """Rows collected by the scenarios, printed by :func:`pytest_terminal_summary`."""
    return request.config.stash.setdefault(ROWS_KEY, [])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the reliability table (independent of ``-s``)."""
    rows = terminalreporter.config.stash.get(ROWS_KEY, [])
    if not rows:
        return
    terminalreporter.section("reliability figures (fault-injection suite)")
    for line in format_table(rows):
        terminalreporter.write_line(line)


@pytest.fixture
def run_id() -> str:
    """A unique token for ids, topics and key prefixes of one scenario."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def make_valkey(tmp_path: Path) -> Iterator[Callable[[str], EmbeddedValkey]]:
    """Start a Valkey of this test's own on a fixed port (so it can be killed and restarted)."""
    started: list[EmbeddedValkey] = []

    def make(appendfsync: str) -> EmbeddedValkey:
        server = EmbeddedValkey(
            tmp_path / f"valkey-{len(started)}", appendfsync=appendfsync, port=free_port()
        )
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedTansu]:
    """A Tansu broker of this test's own (the broker scenario kills it)."""
    server = EmbeddedTansu(port=free_port(), log_path=tmp_path / "tansu.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], ServiceProcess]]:
    """Build (not start) a ``delayline serve`` subprocess; it is stopped after the test."""
    made: list[ServiceProcess] = []

    def make(env: dict[str, str]) -> ServiceProcess:
        service = ServiceProcess(env, tmp_path / f"serve-{len(made)}.log")
        made.append(service)
        return service

    yield make
    for service in made:
        service.stop()


def service_env(
    tmp_path: Path, valkey: EmbeddedValkey, broker: EmbeddedTansu, run_id: str, **extra: str
) -> dict[str, str]:
    """The environment of one service: its own data dir, port, key prefix and consumer group."""
    return {
        "SCHEDULES_DATA_DIR": str(tmp_path / "data"),
        "SCHEDULES_API_PORT": str(free_port()),
        "SCHEDULES_REDIS_URL": valkey.url,
        "SCHEDULES_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "SCHEDULES_LEASE_SECONDS": "3",
        "SCHEDULES_REDIS_PROCESSING_INTERVAL": "1",
        "SCHEDULES_REDIS_KEY_PREFIX": f"faults-{run_id}",
        "SCHEDULES_KAFKA_CONSUMER_GROUP": f"faults-{run_id}",
        "SCHEDULES_SHUTDOWN_TIMEOUT": "10",
        **extra,
    }


@dataclass
class Scenario:
    """A running service under HTTP load, its fired topic read back, its health watched."""

    service: ServiceProcess
    topic: str
    collector: TopicCollector
    health: HealthWatcher
    load: HttpLoad

    def stop_watching(self) -> None:
        """Stop the load and the health watcher (the collector keeps what it read)."""
        self.load.stop()
        self.health.stop()


def start_scenario(
    service: ServiceProcess, broker: EmbeddedTansu, run_id: str, *, send_over: float, due_to: float
) -> Scenario:
    """Start ``service`` and put the standard load on it: 3000 events over ``send_over`` s,
    due up to ``due_to`` s after sending, fired to a fresh 4-partition topic."""
    topic = f"fired-{run_id}"
    create_topics(broker.bootstrap_servers, topic, partitions=4)
    service.start()
    collector = TopicCollector(broker.bootstrap_servers, {topic: 4})
    collector.start()
    health = HealthWatcher(service.base_url)
    health.start()
    load = HttpLoad(service.base_url, topic, run_id, total=3000, send_over=send_over, due_to=due_to)
    load.start()
    return Scenario(service, topic, collector, health, load)

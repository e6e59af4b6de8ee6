"""Fault-injection harness: the service as a real subprocess, a live HTTP load, a fired-topic
reader and a health watcher, each in its own thread so a test can kill things in between.

Everything here is bounded: loops have deadlines, threads stop when told or when time runs out.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Consumer, TopicPartition

HEALTH = "/api/v1/schedules/monitoring/health"
SCHEDULES = "/api/v1/schedules"
ROOT = Path(__file__).resolve().parents[2]


class ServiceProcess:
    """``python -m delayline serve`` with a fixed environment; killed or stopped by PID."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{env['SCHEDULES_API_PORT']}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 90.0) -> float:
        """Start the process and wait for health 200; returns the seconds it took."""
        started = time.monotonic()
        with self.log_path.open("ab") as out:
            out.write(f"\n===== start #{self.starts + 1} at {time.time():.3f} =====\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "delayline", "serve"],
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited at start-up:\n{self.log_tail()}")
            if self.health_status() == 200:
                return time.monotonic() - started
            time.sleep(0.1)
        raise AssertionError(f"service not healthy within {timeout} s:\n{self.log_tail()}")

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def health_status(self) -> int | None:
        """HTTP status of the health endpoint, None when unreachable."""
        try:
            return httpx.get(self.base_url + HEALTH, timeout=3).status_code
        except httpx.HTTPError:
            return None

    def kill(self) -> None:
        """SIGKILL (the fault): no drain, no flush, no commit."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return None

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the service's log (for assertion messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


@dataclass
class Accepted:
    """One event the service acknowledged with a 2xx."""

    due: float
    acked_at: float


class HttpLoad(threading.Thread):
    """Posts batches of events with due times spread over a window, retrying failed batches.

    A batch is retried (same schedule ids: scheduling is idempotent) until it is answered 2xx
    or ``retry_for`` seconds pass; only 2xx answers make its events "accepted".
    """

    def __init__(
        self,
        base_url: str,
        topic: str,
        run_id: str,
        *,
        total: int,
        batch: int = 100,
        send_over: float = 8.0,
        due_from: float = 2.0,
        due_to: float = 12.0,
        retry_for: float = 40.0,
    ) -> None:
        super().__init__(name=f"load-{run_id}", daemon=True)
        self.base_url = base_url
        self.topic = topic
        self.run_id = run_id
        self.total = total
        self.batch = batch
        self.send_over = send_over
        self.due_from = due_from
        self.due_to = due_to
        self.retry_for = retry_for
        self.accepted: dict[str, Accepted] = {}
        self.statuses: Counter[int | str] = Counter()
        self.attempted: set[str] = set()
        self.errors: list[str] = []
        self._halt = threading.Event()
        self.started_at = time.time()

    def stop(self) -> None:
        """Stop after the current request."""
        self._halt.set()

    def body_of(self, schedule_id: str) -> str:
        """The body sent for ``schedule_id`` (checked against every fired copy)."""
        return f'{{"id":"{schedule_id}"}}'

    def run(self) -> None:
        """Send every batch, pacing them evenly over ``send_over`` seconds."""
        self.started_at = time.time()
        batches = (self.total + self.batch - 1) // self.batch
        rng = random.Random(self.run_id)
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            for b in range(batches):
                if self._halt.is_set():
                    return
                target = self.started_at + b * self.send_over / batches
                time.sleep(max(0.0, target - time.time()))
                ids = [f"{self.run_id}-{b * self.batch + i}" for i in range(self.batch)]
                ids = ids[: max(0, self.total - b * self.batch)]
                events = []
                for sid in ids:
                    due = time.time() + rng.uniform(self.due_from, self.due_to)
                    events.append((sid, due))
                self._send(client, events)

    def _send(self, client: httpx.Client, events: list[tuple[str, float]]) -> None:
        payload = {
            "events": [
                {
                    "topic": self.topic,
                    "schedule_id": sid,
                    "scheduled_at": datetime.fromtimestamp(due, UTC).isoformat(),
                    "body": {"id": sid},
                    "entity_type": "fault",
                    "action": "fire",
                }
                for sid, due in events
            ]
        }
        self.attempted.update(sid for sid, _ in events)
        deadline = time.monotonic() + self.retry_for
        while not self._halt.is_set() and time.monotonic() < deadline:
            try:
                response = client.post(SCHEDULES, json=payload)
                self.statuses[response.status_code] += 1
                if 200 <= response.status_code < 300:
                    now = time.time()
                    for sid, due in events:
                        self.accepted[sid] = Accepted(due=due, acked_at=now)
                    return
                if response.status_code < 500:
                    self.errors.append(f"{response.status_code}: {response.text[:300]}")
                    return
            except httpx.HTTPError as exc:
                self.statuses[type(exc).__name__] += 1
            time.sleep(0.2)


@dataclass
class Fired:
    """One fired message read back."""

    schedule_id: str
    key: bytes | None
    value: bytes | None
    read_at: float
    produced_at: float
    """The message's Kafka timestamp (set by the service's producer when it fired)."""


class TopicCollector(threading.Thread):
    """Reads topics by assignment from offset 0 and keeps every message it ever read.

    :meth:`reconnect` starts over on a new (re-created) broker: what was read stays.
    """

    def __init__(self, bootstrap: str, topics: dict[str, int]) -> None:
        super().__init__(name="collector", daemon=True)
        self.topics = topics
        self.messages: list[Fired] = []
        self.raw: dict[str, list[tuple[bytes | None, bytes | None, dict[str, bytes]]]] = {
            t: [] for t in topics
        }
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._servers = bootstrap
        self._generation = 0
        self._consumer = self._make()

    def _make(self) -> Any:
        consumer = Consumer(
            {
                "bootstrap.servers": self._servers,
                "group.id": f"faults-reader-{time.time_ns()}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
                "auto.offset.reset": "earliest",
                "topic.metadata.refresh.interval.ms": 1000,
                "log_level": 2,  # broker restarts are expected here: no connect-refused noise
            }
        )
        consumer.assign(
            [TopicPartition(t, p, 0) for t, parts in self.topics.items() for p in range(parts)]
        )
        return consumer

    def reconnect(self) -> None:
        """Drop the consumer of the old broker and read the new one from offset 0."""
        with self._lock:
            self._generation += 1

    def stop(self) -> None:
        """Stop reading (the thread ends within a poll)."""
        self._halt.set()

    def run(self) -> None:
        """Poll until stopped."""
        generation = 0
        while not self._halt.is_set():
            with self._lock:
                wanted = self._generation
            if wanted != generation:
                with contextlib.suppress(Exception):
                    self._consumer.close()
                self._consumer = self._make()
                generation = wanted
            msg = self._consumer.poll(0.05)
            if msg is None or msg.error():
                continue
            headers = {k: (v or b"") for k, v in (msg.headers() or [])}
            with self._lock:
                self.raw[msg.topic()].append((msg.key(), msg.value(), headers))
                sid = headers.get("x-schedule-id")
                if sid is not None:
                    self.messages.append(
                        Fired(
                            sid.decode(errors="replace"),
                            msg.key(),
                            msg.value(),
                            time.time(),
                            msg.timestamp()[1] / 1000,
                        )
                    )
        with contextlib.suppress(Exception):
            self._consumer.close()

    def snapshot(self) -> list[Fired]:
        """A copy of the fired messages read so far."""
        with self._lock:
            return list(self.messages)

    def raw_of(self, topic: str) -> list[tuple[bytes | None, bytes | None, dict[str, bytes]]]:
        """A copy of every message read from ``topic``."""
        with self._lock:
            return list(self.raw[topic])

    def wait_for(self, ids: set[str], timeout: float) -> set[str]:
        """Wait until every id in ``ids`` was read (or ``timeout``); returns the missing ones."""
        deadline = time.monotonic() + timeout
        while True:
            missing = ids - {f.schedule_id for f in self.snapshot()}
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.2)


class HealthWatcher(threading.Thread):
    """Polls the health endpoint every 0.1 s and remembers (time, status)."""

    def __init__(self, base_url: str) -> None:
        super().__init__(name="health", daemon=True)
        self.url = base_url + HEALTH
        self.samples: list[tuple[float, int | None]] = []
        self._halt = threading.Event()

    def stop(self) -> None:
        """Stop polling."""
        self._halt.set()

    def run(self) -> None:
        """Poll until stopped."""
        with httpx.Client(timeout=2) as client:
            while not self._halt.is_set():
                try:
                    code: int | None = client.get(self.url).status_code
                except httpx.HTTPError:
                    code = None
                self.samples.append((time.time(), code))
                self._halt.wait(0.1)

    def first_ok_after(self, t: float) -> float | None:
        """Seconds from ``t`` to the first 200 at or after it."""
        for at, code in list(self.samples):
            if at >= t and code == 200:
                return at - t
        return None


@dataclass
class Verdict:
    """What a run's fired messages say about the accepted events."""

    fired: int
    lost: set[str]
    duplicates: int
    duplicated_ids: set[str]
    mismatched: list[str] = field(default_factory=list)
    unknown: set[str] = field(default_factory=set)


def judge(load: HttpLoad, fired: list[Fired]) -> Verdict:
    """Lost = accepted but never read; duplicates = extra copies (each checked identical)."""
    counts = Counter(f.schedule_id for f in fired)
    mine = {sid: n for sid, n in counts.items() if sid.startswith(load.run_id + "-")}
    mismatched = []
    for f in fired:
        if f.schedule_id in mine and f.value != load.body_of(f.schedule_id).encode():
            mismatched.append(f"{f.schedule_id}: {f.value!r}")
    return Verdict(
        fired=len(mine),
        lost=set(load.accepted) - set(mine),
        duplicates=sum(n - 1 for n in mine.values()),
        duplicated_ids={sid for sid, n in mine.items() if n > 1},
        mismatched=mismatched,
        unknown=set(mine) - load.attempted,
    )


def first_fired_after(fired: list[Fired], t: float) -> float | None:
    """Seconds from ``t`` to the first message the service produced after it."""
    after = [f.produced_at for f in fired if f.produced_at >= t]
    return min(after) - t if after else None


def describe(ids: list[str], load: HttpLoad, fired: list[Fired], origin: float) -> str:
    """Due, ack and every fired copy of ``ids``, in seconds from ``origin`` (for failures)."""
    lines = []
    for sid in ids:
        accepted = load.accepted.get(sid)
        copies = [f"{f.produced_at - origin:+.3f}" for f in fired if f.schedule_id == sid]
        when = (
            f"due {accepted.due - origin:+.3f} acked {accepted.acked_at - origin:+.3f}"
            if accepted
            else "not acknowledged"
        )
        lines.append(f"{sid}: {when}, fired at {', '.join(copies)}")
    return "\n".join(lines)


_DUE_RANGE = re.compile(r"\(due (\S+) to (\S+)\)")


def refired_due_ranges(log: str) -> list[tuple[float, float]]:
    """Due-time ranges (epoch seconds) of the batches the service says it fired without an
    acknowledgement (the batch failed, or its lease ran out first): those fire again."""
    ranges = []
    for line in log.splitlines():
        if "fire again" not in line:
            continue
        found = _DUE_RANGE.search(line)
        if found is not None:
            first, last = (datetime.fromisoformat(t).timestamp() for t in found.groups())
            ranges.append((first, last))
    return ranges

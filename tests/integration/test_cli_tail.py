"""`delayline tail` against the real broker, run as a user would, from another process."""

from __future__ import annotations

import base64
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from confluent_kafka import Producer

from delayline.adapters.embedded import EmbeddedTansu
from tests.support import create_topics

BINARY = b"\x00\x02\xff\xfe\x80\xc3\x28tail\xff"


def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.put(line)


def _wait_for(lines: queue.Queue[str], words: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        seen.append(line)
        if words in line:
            return line
    raise AssertionError(f"no line with {words!r} in {seen}")


def test_tail_prints_text_quoted_and_binary_as_base64(
    broker: EmbeddedTansu, unique: str, tmp_path: Path
) -> None:
    topic = f"tail-{unique}"
    create_topics(broker.bootstrap_servers, topic)
    env = {**os.environ, "SCHEDULES_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "delayline", "tail", topic, "--bootstrap", broker.bootstrap_servers],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    pump = threading.Thread(target=_pump, args=(proc, lines), daemon=True)
    pump.start()
    try:
        _wait_for(lines, "watching", 60)
        producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 0})
        for sid, value in (("bin-1", BINARY), ("txt-1", "héllo".encode())):
            producer.produce(topic, value=value, key=b"k", headers=[("x-schedule-id", sid)])
        assert producer.flush(20) == 0
        binary = _wait_for(lines, "bin-1", 60)
        assert binary.rstrip().endswith("base64:" + base64.b64encode(BINARY).decode()), binary
        text = _wait_for(lines, "txt-1", 60)
        assert text.rstrip().endswith("'héllo'"), text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        pump.join(10)  # the pipe is at its end once the process is gone
        assert proc.stdout is not None
        proc.stdout.close()

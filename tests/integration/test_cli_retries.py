"""`delayline schedule` always sends its own schedule id, so its retries after a 504 ("outcome
unknown") or a 503 can never create a second event. The server is a stub that answers the first
attempts with those statuses and records what the CLI sent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest


class _Stub(BaseHTTPRequestHandler):
    answers: ClassVar[list[int]] = []
    bodies: ClassVar[list[dict[str, object]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        status = type(self).answers.pop(0) if type(self).answers else 201
        reply: dict[str, object] = {"error": "outcome unknown: retry with the same schedule_id"}
        if status == 201:
            reply = {"schedule_id": body.get("schedule_id", "server-made"), "created": True}
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[tuple[str, type[_Stub]]]:
    handler = type("Handler", (_Stub,), {"answers": [], "bodies": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def _schedule(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "delayline",
            "schedule",
            "t",
            "b",
            "--in",
            "1h",
            "--api-url",
            url,
            *extra,
        ],
        env={**os.environ, "SCHEDULES_API_KEYS": "[]"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_cli_retries_with_the_same_schedule_id(stub: tuple[str, type[_Stub]]) -> None:
    url, handler = stub
    handler.answers.extend([504, 503])
    done = _schedule(url)
    assert done.returncode == 0, done.stderr
    ids = [body.get("schedule_id") for body in handler.bodies]
    assert len(ids) == 3 and len(set(ids)) == 1, ids  # old code: no id sent, no retry
    assert isinstance(ids[0], str) and len(ids[0]) == 32
    assert done.stdout.strip() == ids[0]


def test_the_cli_sends_the_given_id(stub: tuple[str, type[_Stub]]) -> None:
    url, handler = stub
    done = _schedule(url, "--id", "my-own-id")
    assert done.returncode == 0, done.stderr
    assert [body["schedule_id"] for body in handler.bodies] == ["my-own-id"]

"""Smoke test of the benchmark suite: ``python -m bench --quick`` runs and writes its results.

It asserts no figure (timing assertions would be flaky on shared machines); it only checks the
suite still runs end to end against the current code and produces a well-formed document.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_quick_bench_runs_and_writes_json(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "quick.json").read_text())
    assert doc["quick"] is True
    results = doc["results"]
    for name in ("scheduling", "firing", "precision", "memory"):
        assert "error" not in results[name], results[name]
    assert results["firing"]["runs"][0]["fired"] == results["firing"]["runs"][0]["events"]
    assert results["memory"]["bytes_per_event"] > 0
    assert (tmp_path / "quick-lateness-cdf.png").stat().st_size > 0
    assert (tmp_path / "quick-throughput.png").stat().st_size > 0

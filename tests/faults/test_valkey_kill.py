"""Scenario 2: SIGKILL Valkey under load and restart it from its AOF, for both fsync policies."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from delayline.adapters.embedded import EmbeddedTansu, EmbeddedValkey
from tests.faults.conftest import Row, service_env, start_scenario
from tests.faults.harness import (
    ServiceProcess,
    describe,
    first_fired_after,
    judge,
)

pytestmark = pytest.mark.faults

LOAD = 3000
DOWN_SECONDS = 3.0
EVERYSEC_WINDOW = 2.0
"""Valkey with ``everysec`` may postpone a write for up to 2 s while an fsync is slow."""


@pytest.mark.parametrize("appendfsync", ["always", "everysec"])
def test_sigkill_valkey_under_load(
    appendfsync: str,
    tmp_path: Path,
    run_id: str,
    make_valkey: Callable[[str], EmbeddedValkey],
    own_broker: EmbeddedTansu,
    make_service: Callable[[dict[str, str]], ServiceProcess],
    reliability_rows: list[Row],
) -> None:
    valkey = make_valkey(appendfsync)
    service = make_service(service_env(tmp_path, valkey, own_broker, run_id))
    run = start_scenario(service, own_broker, run_id, send_over=10, due_to=14)
    collector, health, load = run.collector, run.health, run.load
    try:
        time.sleep(5)
        killed_at = time.time()
        valkey.kill()
        time.sleep(DOWN_SECONDS)
        restarted_at = time.time()
        valkey.start()
        load.join(60)
        missing = collector.wait_for(set(load.accepted), timeout=40)
        time.sleep(4)
    finally:
        load.stop()
        health.stop()
        collector.stop()
    fired = collector.snapshot()
    verdict = judge(load, fired)
    down = [code for at, code in health.samples if killed_at + 0.5 < at < restarted_at]
    acked_while_down = [
        sid for sid, a in load.accepted.items() if killed_at + 0.2 < a.acked_at < restarted_at
    ]
    reliability_rows.append(
        Row(
            scenario=f"Valkey SIGKILL + restart, appendfsync={appendfsync}",
            load=len(load.accepted),
            faults=f"1 SIGKILL of Valkey, down {DOWN_SECONDS:.0f} s",
            bad_inputs=0,
            lost=len(verdict.lost),
            duplicates=verdict.duplicates,
            health_s=health.first_ok_after(restarted_at),
            firing_s=first_fired_after(fired, restarted_at),
            note=f"HTTP while down: {sorted(map(str, load.statuses.items()))}",
        )
    )
    assert service.alive, service.log_tail()
    assert down and 200 not in down, f"health while Redis was down: {down}"
    assert not acked_while_down, f"{len(acked_while_down)} events acknowledged while Redis was down"
    assert len(load.accepted) == LOAD, (load.statuses, load.errors[:5])
    assert not verdict.mismatched, verdict.mismatched[:5]
    if appendfsync == "always":
        assert not missing, f"{len(missing)} acknowledged events lost: {sorted(missing)[:10]}"
    else:
        # The loss window of everysec: only events acknowledged just before the kill may go.
        early = {s for s in missing if load.accepted[s].acked_at < killed_at - EVERYSEC_WINDOW}
        assert not early, f"events lost outside the everysec window: {sorted(early)[:10]}"
    late = {s for s in verdict.duplicated_ids if load.accepted[s].due > restarted_at + 1}
    assert not late, (
        f"duplicates of events due after the outage (times from the restart): "
        f"{describe(sorted(late)[:5], load, fired, restarted_at)}\n{service.log_tail(3000)}"
    )

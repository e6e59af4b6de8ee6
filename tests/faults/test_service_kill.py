"""Scenario 1: SIGKILL the service while it fires, restart it on the same data dir."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from delayline.adapters.embedded import EmbeddedTansu, EmbeddedValkey
from tests.faults.conftest import Row, service_env, start_scenario
from tests.faults.harness import (
    ServiceProcess,
    first_fired_after,
    judge,
)

pytestmark = pytest.mark.faults

LOAD = 3000
LEASE = 3.0


def test_sigkill_service_mid_firing_loses_nothing(
    tmp_path: Path,
    run_id: str,
    make_valkey: Callable[[str], EmbeddedValkey],
    own_broker: EmbeddedTansu,
    make_service: Callable[[dict[str, str]], ServiceProcess],
    reliability_rows: list[Row],
) -> None:
    service = make_service(service_env(tmp_path, make_valkey("everysec"), own_broker, run_id))
    # Due times from 2 s to 14 s; the batches keep arriving across the kill (retried until 2xx).
    run = start_scenario(service, own_broker, run_id, send_over=10, due_to=14)
    collector, health, load = run.collector, run.health, run.load
    try:
        time.sleep(6)  # firing is well under way
        assert collector.snapshot(), "nothing fired before the kill"
        killed_at = time.time()
        service.kill()
        service.start()
        load.join(60)
        missing = collector.wait_for(set(load.accepted), timeout=40)
        time.sleep(LEASE + 1)  # late duplicates (expired leases) show up too
    finally:
        load.stop()
        health.stop()
        collector.stop()
    fired = collector.snapshot()
    verdict = judge(load, fired)
    unacked = len(load.attempted) - len(load.accepted)
    reliability_rows.append(
        Row(
            scenario="service SIGKILL mid-firing, restart",
            load=len(load.accepted),
            faults="1 SIGKILL of `delayline serve`",
            bad_inputs=0,
            lost=len(verdict.lost),
            duplicates=verdict.duplicates,
            health_s=health.first_ok_after(killed_at),
            firing_s=first_fired_after(fired, killed_at),
            note=f"times from the kill, restart included; {unacked} unacknowledged",
        )
    )
    assert service.alive, service.log_tail()
    assert len(load.accepted) == LOAD, (load.statuses, load.errors[:5])
    assert not missing, f"{len(missing)} accepted events never fired: {sorted(missing)[:10]}"
    assert not verdict.mismatched, verdict.mismatched[:5]
    # Only events claimed before the kill can be in flight: a duplicate must be due before it.
    late = {s for s in verdict.duplicated_ids if load.accepted[s].due > killed_at + 0.5}
    assert not late, f"duplicates of events due after the kill: {sorted(late)[:10]}"

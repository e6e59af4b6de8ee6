"""Scenario 1: SIGKILL the service while it fires, restart it on the same data dir."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from delayline.adapters.embedded import EmbeddedTansu, EmbeddedValkey
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.clock import SystemClock
from delayline.domain.events import ScheduledEvent, new_event, utc_now
from delayline.domain.outcomes import Delivery, ExecutionResult
from delayline.services.dispatcher import Dispatcher, DispatcherConfig
from tests.faults.conftest import Row, service_env, start_scenario
from tests.faults.harness import (
    ServiceProcess,
    describe,
    first_fired_after,
    judge,
    refired_due_ranges,
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
    # A duplicate is an event fired without an acknowledgement, which fires again when its
    # lease ends. The kill leaves only events claimed before it so: due before it. After the
    # restart a batch can still lose its lease on a starved host (its ack cannot reach Valkey
    # in time): the service logs each such batch with its due range, and only those count.
    refired = refired_due_ranges(service.log_path.read_text(errors="replace"))
    late = sorted(
        s
        for s in verdict.duplicated_ids
        if load.accepted[s].due > killed_at + 0.5
        and not any(first - 1e-5 <= load.accepted[s].due <= last + 1e-5 for first, last in refired)
    )
    assert not late, (
        "duplicates of events due after the kill, in no batch logged as unacknowledged:\n"
        + describe(late[:20], load, fired, killed_at)
    )


class SlowPublisher:
    """Delivers every batch ``delay`` seconds after it is handed over (a starved host)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.published: list[str] = []
        self.twice = asyncio.Event()

    async def publish(self, events: Sequence[ScheduledEvent]) -> list[BaseException | Delivery]:
        await asyncio.sleep(self.delay)
        self.published += [e.schedule_id for e in events]
        if len(self.published) >= 2:
            self.twice.set()
        return [Delivery(time.time(), 0, i) for i, _ in enumerate(events)]


class NoSink:
    def record(self, result: ExecutionResult) -> None:
        pass


async def test_a_batch_that_outlives_its_lease_is_logged_with_its_due_range(
    store: RedisNearTermStore, caplog: pytest.LogCaptureFixture
) -> None:
    """The kill test's judgement rests on this: a batch whose acknowledgement comes after its
    lease ended fires again, and the service says so, naming the batch's due times."""
    caplog.set_level(logging.WARNING, logger="delayline.services.dispatcher")
    publisher = SlowPublisher(delay=1.5)
    config = DispatcherConfig(max_sleep_seconds=0.2, lease_seconds=0.3)
    dispatcher = Dispatcher(store, publisher, NoSink(), SystemClock(), config)
    event = new_event(topic="t", body="b", scheduled_at=utc_now())
    await store.schedule([event])
    task = asyncio.create_task(dispatcher.run())
    try:
        await asyncio.wait_for(publisher.twice.wait(), 30)  # fired again after its lease
    finally:
        dispatcher.stop()
        await task  # the batches in flight finish: their acknowledgements are in
    ranges = refired_due_ranges(caplog.text)
    assert ranges, f"no lost lease logged:\n{caplog.text}"
    due = event.scheduled_at.timestamp()
    assert any(first <= due <= last for first, last in ranges), (ranges, due)

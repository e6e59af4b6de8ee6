"""The lifecycle's pure parts: folding a history into a record, and the thread-safe recorder."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from delayline.domain.events import EventStatus, new_event
from delayline.domain.outcomes import LifecycleEntry, Transition, fold_history
from delayline.services.analytics import BatchRecorder

T0 = datetime(2031, 1, 1, tzinfo=UTC)
EVENT = new_event(
    topic="t", body="b", scheduled_at=T0, correlation_id="k", schedule_id="e1", now=T0
)


def _at(seconds: float, transition: Transition, **kw: Any) -> LifecycleEntry:
    return LifecycleEntry("e1", transition, T0 + timedelta(seconds=seconds), **kw)


def test_a_fired_event_folds_into_its_full_record() -> None:
    record = fold_history(
        [
            _at(-60, Transition.SCHEDULED, event=EVENT, detail="http"),
            _at(0, Transition.CLAIMED, event=EVENT, node="n1", detail="token"),
            _at(0.25, Transition.PUBLISHED, event=EVENT, partition=2, offset=41),
            _at(0.5, Transition.COMPLETED, event=EVENT),
        ]
    )
    assert record is not None
    assert record.status is EventStatus.COMPLETED
    assert (record.topic, record.body, record.correlation_id) == ("t", b"b", "k")
    assert record.fired_at == T0 + timedelta(seconds=0.25)
    assert record.lateness_seconds == 0.25
    assert (record.kafka_partition, record.kafka_offset) == (2, 41)
    assert record.updated_at == T0 + timedelta(seconds=0.5)
    doc = record.to_dict()
    assert doc["fired_at"] == "2031-01-01T00:00:00.250000+00:00"
    assert doc["kafka_offset"] == 41


def test_a_cancel_without_a_snapshot_keeps_the_latest_fields() -> None:
    moved = replace(EVENT, scheduled_at=T0 + timedelta(days=1))
    record = fold_history(
        [
            _at(0, Transition.CANCELLED),
            _at(-2, Transition.SCHEDULED, event=EVENT),
            _at(-1, Transition.RESCHEDULED, event=moved),
        ]
    )
    assert record is not None
    assert record.status is EventStatus.CANCELLED
    assert record.scheduled_at == moved.scheduled_at
    assert record.fired_at is None


def test_the_first_terminal_transition_is_final_and_errors_are_kept() -> None:
    record = fold_history(
        [
            _at(0, Transition.SCHEDULED, event=EVENT),
            _at(1, Transition.RETRIED, event=EVENT, detail="NOT_LEADER"),
            _at(2, Transition.FAILED, event=EVENT, detail="too many"),
            _at(2, Transition.CLAIMED, event=EVENT),  # a late duplicate's claim
            _at(3, Transition.COMPLETED, event=EVENT),
        ]
    )
    assert record is not None
    assert record.status is EventStatus.FAILED
    assert record.last_error == "too many"


def test_nothing_to_fold_without_a_snapshot() -> None:
    assert fold_history([]) is None
    assert fold_history([_at(0, Transition.CANCELLED)]) is None


async def test_a_recorder_takes_items_from_other_threads() -> None:
    written: list[int] = []
    wrote = asyncio.Event()

    async def write(batch: Sequence[int]) -> None:
        written.extend(batch)
        wrote.set()

    recorder = BatchRecorder(write, batch_size=100, flush_interval=3600)
    await recorder.start()

    def produce(first: int) -> None:
        for i in range(first, first + 50):
            recorder.record(i)

    threads = [threading.Thread(target=produce, args=(k * 50,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # a full batch wakes the writer on its loop although it was recorded on other threads
    await asyncio.wait_for(wrote.wait(), 30)
    await recorder.stop()
    assert sorted(written) == list(range(200))
    assert recorder.dropped == 0

"""End to end on the near-term path: schedule → Redis → dispatcher → Kafka, real servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

import pytest

from delayline.adapters.embedded import EmbeddedTansu
from delayline.adapters.kafka_producer import KafkaEventPublisher, producer_config
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.clock import SystemClock
from delayline.domain.events import EventStatus, ScheduledEvent, utc_now
from delayline.domain.outcomes import ExecutionResult, Outcome
from delayline.services.dispatcher import Dispatcher, DispatcherConfig
from delayline.services.scheduler import SchedulerService
from tests.support import TopicReader, eventually_status


@dataclass
class Results:
    """An outcome sink that keeps everything."""

    items: list[ExecutionResult] = field(default_factory=list)

    def record(self, result: ExecutionResult) -> None:
        self.items.append(result)


@dataclass
class Running:
    service: SchedulerService
    dispatcher: Dispatcher
    results: Results
    topic: str
    reader: TopicReader


@pytest.fixture
async def running(
    store: RedisNearTermStore, broker: EmbeddedTansu, unique: str
) -> AsyncIterator[Running]:
    topic = f"fired-{unique}"
    reader = TopicReader(broker.bootstrap_servers, topic)
    publisher = KafkaEventPublisher(
        producer_config(broker.bootstrap_servers, linger_ms=0, lease_seconds=30, extra={})
    )
    await publisher.start()
    results = Results()
    clock = SystemClock()
    service = SchedulerService(store, clock)
    dispatcher = Dispatcher(
        store, publisher, results, clock, DispatcherConfig(max_sleep_seconds=5, node_id="t")
    )
    task = asyncio.create_task(dispatcher.run())
    yield Running(service, dispatcher, results, topic, reader)
    dispatcher.stop()
    await task
    await publisher.stop()
    reader.close()


async def test_fires_on_time_with_key_and_headers(running: Running) -> None:
    due = utc_now() + timedelta(seconds=1)
    sid = await running.service.schedule_event(
        topic=running.topic,
        entity_type="user",
        action="send_reminder",
        body='{"user_id": 123}',
        scheduled_at=due,
        correlation_id="reminder-123",
        headers={"priority": "high"},
        priority=1,
    )
    [msg] = await asyncio.to_thread(running.reader.read, 1)
    assert msg.key == b"reminder-123"
    assert msg.value == b'{"user_id": 123}'
    assert msg.header("x-schedule-id") == sid
    assert msg.header("x-correlation-id") == "reminder-123"
    assert msg.header("x-entity-type") == "user"
    assert msg.header("x-action") == "send_reminder"
    assert msg.header("x-scheduled-at") == due.isoformat()
    assert msg.header("priority") == "high"
    event = await eventually_status(lambda: running.service.get_event(sid))
    assert isinstance(event, ScheduledEvent)
    [result] = running.results.items
    assert result.outcome is Outcome.SUCCESS
    assert 0 <= result.delay_seconds < 1.0  # fired after, not before, its due time
    assert event.status is EventStatus.COMPLETED


async def test_past_due_fires_at_once_and_key_defaults_to_id(running: Running) -> None:
    sid = await running.service.schedule_event(
        topic=running.topic, body="x", scheduled_at=utc_now() - timedelta(seconds=30)
    )
    [msg] = await asyncio.to_thread(running.reader.read, 1, 10)
    assert msg.key == sid.encode()


async def test_too_late_is_skipped_with_reason(running: Running) -> None:
    sid = await running.service.schedule_event(
        topic=running.topic,
        body="x",
        scheduled_at=utc_now() - timedelta(seconds=120),
        max_delay_seconds=60,
    )
    marker = await running.service.schedule_event(
        topic=running.topic, body="after", scheduled_at=utc_now() + timedelta(seconds=0.3)
    )
    msgs = await asyncio.to_thread(running.reader.read, 2, 3)
    assert [m.header("x-schedule-id") for m in msgs] == [marker]
    event = await eventually_status(lambda: running.service.get_event(sid))
    assert isinstance(event, ScheduledEvent)
    assert event.status is EventStatus.SKIPPED
    assert event.last_error is not None
    assert "max_delay_seconds" in event.last_error
    assert Outcome.SKIPPED in [r.outcome for r in running.results.items]


async def test_cancel_before_due_never_fires(running: Running) -> None:
    sid = await running.service.schedule_event(
        topic=running.topic, body="no", scheduled_at=utc_now() + timedelta(seconds=1)
    )
    assert await running.service.cancel_event(sid)
    marker = await running.service.schedule_event(
        topic=running.topic, body="yes", scheduled_at=utc_now() + timedelta(seconds=1.5)
    )
    msgs = await asyncio.to_thread(running.reader.read, 2, 4)
    assert [m.header("x-schedule-id") for m in msgs] == [marker]


async def test_reschedule_moves_it(running: Running) -> None:
    sid = await running.service.schedule_event(
        topic=running.topic, body="later", scheduled_at=utc_now() + timedelta(hours=1)
    )
    new_due = utc_now() + timedelta(seconds=0.5)
    assert await running.service.reschedule_event(sid, new_due)
    [msg] = await asyncio.to_thread(running.reader.read, 1, 10)
    assert msg.header("x-schedule-id") == sid
    assert msg.header("x-scheduled-at") == new_due.isoformat()


async def test_same_id_twice_is_one_event(running: Running) -> None:
    due = utc_now() + timedelta(seconds=0.5)
    for _ in range(3):
        await running.service.schedule_event(
            topic=running.topic, body="once", scheduled_at=due, schedule_id="only-once"
        )
    msgs = await asyncio.to_thread(running.reader.read, 2, 3)
    assert [m.header("x-schedule-id") for m in msgs] == ["only-once"]


async def test_priority_orders_simultaneous_events(running: Running) -> None:
    due = utc_now() + timedelta(seconds=1)
    events = [
        running.service.build_event(
            topic=running.topic, body=str(p), scheduled_at=due, priority=p, schedule_id=f"p{p}"
        )
        for p in (1, 9, -4, 5, 0)
    ]
    await running.service.schedule_events(events)
    msgs = await asyncio.to_thread(running.reader.read, 5)
    assert [m.value for m in msgs] == [b"9", b"5", b"1", b"0", b"-4"]


async def test_wakes_early_for_a_sooner_event(running: Running) -> None:
    # The dispatcher sleeps up to 5 s; a sooner event must wake it.
    await running.service.schedule_event(
        topic=running.topic, body="late", scheduled_at=utc_now() + timedelta(seconds=30)
    )
    await asyncio.sleep(0.2)
    due = utc_now() + timedelta(seconds=0.3)
    await running.service.schedule_event(topic=running.topic, body="soon", scheduled_at=due)
    [msg] = await asyncio.to_thread(running.reader.read, 1, 10)
    assert msg.value == b"soon"
    for _ in range(100):  # the outcome is recorded just after the delivery report
        if running.results.items:
            break
        await asyncio.sleep(0.02)
    [result] = running.results.items
    assert result.delay_seconds < 1.0

"""Publish failures: retried with backoff up to the limit, then failed with the error."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import timedelta

from delayline.adapters.embedded import EmbeddedTansu
from delayline.adapters.kafka_producer import KafkaEventPublisher, producer_config
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.clock import SystemClock
from delayline.domain.events import EventRules, EventStatus, ScheduledEvent, new_event, utc_now
from delayline.domain.outcomes import Delivery, ExecutionResult, Outcome
from delayline.errors import ErrorClass, PublishError
from delayline.services.dispatcher import Dispatcher, DispatcherConfig
from tests.support import eventually_status

# Rules that let through what this producer refuses: ingress normally refuses such an event up
# front, so these build one directly to see how a refusal at publish time is handled.
LOOSE_RULES = EventRules(max_message_bytes=4_000_000)


class Results:
    def __init__(self) -> None:
        self.items: list[ExecutionResult] = []

    def record(self, result: ExecutionResult) -> None:
        self.items.append(result)


class FlakyPublisher:
    """Fails every publish with a transient error, recording when each attempt came."""

    def __init__(self) -> None:
        self.attempts: list[float] = []

    async def publish(self, events: Sequence[ScheduledEvent]) -> list[BaseException | Delivery]:
        self.attempts += [time.monotonic()] * len(events)
        return [PublishError("NOT_LEADER: try again", ErrorClass.TRANSIENT) for _ in events]


async def _run(store: RedisNearTermStore, publisher: object, results: Results) -> Dispatcher:
    config = DispatcherConfig(
        max_sleep_seconds=0.5,
        max_publish_attempts=3,
        retry_backoff_initial=0.1,
        retry_backoff_max=1.0,
    )
    return Dispatcher(store, publisher, results, SystemClock(), config)  # type: ignore[arg-type]


async def test_transient_failures_back_off_then_fail(store: RedisNearTermStore) -> None:
    publisher = FlakyPublisher()
    results = Results()
    dispatcher = await _run(store, publisher, results)
    task = asyncio.create_task(dispatcher.run())
    event = new_event(topic="t", body="b", scheduled_at=utc_now())
    await store.schedule([event])
    got = await eventually_status(lambda: store.get(event.schedule_id), timeout=15)
    dispatcher.stop()
    await task
    assert isinstance(got, ScheduledEvent)
    assert got.status is EventStatus.FAILED
    assert got.last_error is not None
    assert "NOT_LEADER" in got.last_error
    assert len(publisher.attempts) == 3
    gaps = [b - a for a, b in zip(publisher.attempts, publisher.attempts[1:], strict=False)]
    assert gaps[0] >= 0.1  # backoff: at least half of 2 * 0.1 s
    assert gaps[1] >= 0.2  # and it grows: at least half of 4 * 0.1 s
    assert [r.outcome for r in results.items] == [Outcome.ERROR]
    assert results.items[0].retry_count == 2


async def test_permanent_failure_fails_at_once(
    store: RedisNearTermStore, broker: EmbeddedTansu, unique: str
) -> None:
    publisher = KafkaEventPublisher(
        producer_config(broker.bootstrap_servers, linger_ms=0, lease_seconds=30, extra={})
    )
    await publisher.start()
    results = Results()
    dispatcher = await _run(store, publisher, results)
    task = asyncio.create_task(dispatcher.run())
    too_big = new_event(
        topic=f"big-{unique}",
        body="x" * 1_100_000,  # over librdkafka's message.max.bytes: refused, never retried
        scheduled_at=utc_now() - timedelta(seconds=1),
        max_body_bytes=2_000_000,
        rules=LOOSE_RULES,
    )
    await store.schedule([too_big])
    got = await eventually_status(lambda: store.get(too_big.schedule_id), timeout=15)
    dispatcher.stop()
    await task
    await publisher.stop()
    assert isinstance(got, ScheduledEvent)
    assert got.status is EventStatus.FAILED
    assert got.last_error is not None
    assert "MSG_SIZE_TOO_LARGE" in got.last_error
    assert [r.retry_count for r in results.items] == [0]


async def test_one_publish_call_reports_each_event_in_order(
    broker: EmbeddedTansu, unique: str
) -> None:
    """Refused at once (too big), delivered, and nothing at all: one outcome per event, in the
    order given, whichever thread produced it."""
    publisher = KafkaEventPublisher(
        producer_config(broker.bootstrap_servers, linger_ms=0, lease_seconds=30, extra={})
    )
    await publisher.start()
    try:
        assert await publisher.publish([]) == []
        events = [
            new_event(
                topic=f"mixed-{unique}",
                body="x" * (1_100_000 if i == 2 else 10),
                scheduled_at=utc_now(),
                max_body_bytes=2_000_000,
                rules=LOOSE_RULES,
            )
            for i in range(5)
        ]
        started = time.time()
        outcomes = await asyncio.wait_for(publisher.publish(events), 30)
    finally:
        await publisher.stop()
    assert len(outcomes) == 5
    refused = outcomes[2]
    assert isinstance(refused, PublishError) and refused.error_class is ErrorClass.PERMANENT
    delivered = [o for i, o in enumerate(outcomes) if i != 2]
    assert all(isinstance(o, Delivery) and o.acked_at >= started for o in delivered)
    assert all(o.partition >= 0 and o.offset >= 0 for o in delivered if isinstance(o, Delivery))


class FailsOnce:
    """Fails the first publish (transient), then delivers; records when each attempt came."""

    def __init__(self) -> None:
        self.attempts: list[float] = []

    async def publish(self, events: Sequence[ScheduledEvent]) -> list[BaseException | Delivery]:
        self.attempts += [time.monotonic()] * len(events)
        if len(self.attempts) == 1:
            return [PublishError("NOT_LEADER: try again", ErrorClass.TRANSIENT)]
        return [Delivery(time.time(), 0, i) for i, _ in enumerate(events)]


async def test_a_retry_waits_out_its_backoff_even_when_claimed_ahead(
    store: RedisNearTermStore,
) -> None:
    """The claim runs ahead of the retry time (lookahead 0.5 s); the publish must not."""
    publisher = FailsOnce()
    config = DispatcherConfig(
        max_sleep_seconds=0.5,
        retry_backoff_initial=0.3,
        retry_backoff_max=1.0,
        claim_lookahead_seconds=0.5,
    )
    dispatcher = Dispatcher(store, publisher, Results(), SystemClock(), config)
    task = asyncio.create_task(dispatcher.run())
    event = new_event(topic="t", body="b", scheduled_at=utc_now())
    await store.schedule([event])
    got = await eventually_status(lambda: store.get(event.schedule_id), timeout=15)
    dispatcher.stop()
    await task
    assert isinstance(got, ScheduledEvent) and got.status is EventStatus.COMPLETED
    assert len(publisher.attempts) == 2
    assert publisher.attempts[1] - publisher.attempts[0] >= 0.3  # half of 2 * 0.3 s at least

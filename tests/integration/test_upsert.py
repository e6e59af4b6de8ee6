"""Upsert by schedule id through the public contract: Kafka in → Kafka out, both tiers (real
Valkey, real chDB, the Tansu broker). A newer message replaces the event wherever it is, a
message after a tombstone or a firing schedules it again, a redelivered one changes nothing."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import uvicorn

from delayline.adapters.clickhouse.long_term_store import ClickHouseLongTermStore
from delayline.adapters.embedded import EmbeddedTansu
from delayline.adapters.kafka_producer import KafkaEventPublisher, producer_config
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.api.app import create_app
from delayline.clock import SystemClock
from delayline.domain.events import EventStatus
from delayline.domain.outcomes import ExecutionResult
from delayline.metrics import Metrics
from delayline.services.dispatcher import Dispatcher, DispatcherConfig
from delayline.services.ingress import DelayedEventsConsumer
from delayline.services.scheduler import SchedulerService
from tests.integration.api.conftest import StaticHealth
from tests.integration.kafka.conftest import Ingress, until
from tests.support import Fired, TopicReader, create_topics

HORIZON = 60  # due later than this → ClickHouse


class _Sink:
    def record(self, result: ExecutionResult) -> None:
        pass


@dataclass
class Env:
    ingress: Ingress
    target: str
    reader: TopicReader
    near: RedisNearTermStore
    far: ClickHouseLongTermStore
    service: SchedulerService

    def native(
        self, sid: str, due: datetime, body: bytes
    ) -> tuple[bytes, bytes, list[tuple[str, bytes | None]]]:
        """A native-headers message scheduling ``sid`` at ``due``."""
        at_ms = str(int(due.timestamp() * 1000)).encode()
        headers: list[tuple[str, bytes | None]] = [
            ("x-topic", self.target.encode()),
            ("x-scheduled-at", at_ms),
            ("x-schedule-id", sid.encode()),
        ]
        return (sid.encode(), body, headers)

    async def start_consumer(self, group: str | None = None) -> DelayedEventsConsumer:
        ingress = self.ingress if group is None else replace(self.ingress, consumers=[])
        if group is not None:
            ingress.group = group
        consumer = ingress.consumer()
        if ingress is not self.ingress:
            self.ingress.consumers.append(consumer)
        await consumer.start()
        if group is None:  # joined and reading: a tombstone for no event is consumed
            self.ingress.produce((b"warm-up", None, []))

            async def ready() -> bool:
                return consumer.stats.cancel_missed > 0

            await until(ready)
        return consumer

    def fired_after(self, settle_until: datetime) -> list[Fired]:
        """Everything fired to the target topic, read until ``settle_until`` (+1 s) passed."""
        wait = (settle_until - datetime.now(UTC)).total_seconds() + 1.0
        return self.reader.read_for(max(wait, 0.5))


@pytest.fixture
async def env(
    store: RedisNearTermStore,
    lt_store: ClickHouseLongTermStore,
    broker: EmbeddedTansu,
    unique: str,
) -> AsyncIterator[Env]:
    bootstrap = broker.bootstrap_servers
    service = SchedulerService(
        store, SystemClock(), immediate_horizon_seconds=HORIZON, far=lt_store
    )
    topic, dlq, target = f"delayed-{unique}", f"delayed-{unique}.dlq", f"fired-{unique}"
    create_topics(bootstrap, topic)
    dead = TopicReader(bootstrap, dlq)
    reader = TopicReader(bootstrap, target)
    ingress = Ingress(bootstrap, topic, dlq, f"g-{unique}", service, dead)
    publisher = KafkaEventPublisher(
        producer_config(bootstrap, linger_ms=0, lease_seconds=30, extra={})
    )
    await publisher.start()
    dispatcher = Dispatcher(
        store, publisher, _Sink(), SystemClock(), DispatcherConfig(max_sleep_seconds=1, node_id="t")
    )
    task = asyncio.create_task(dispatcher.run())
    yield Env(ingress, target, reader, store, lt_store, service)
    for consumer in ingress.consumers:
        await consumer.stop()
    dispatcher.stop()
    await task
    await publisher.stop()
    reader.close()
    dead.close()


def _in(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


async def test_a_key_sent_again_after_its_tombstone_fires_once_at_the_new_time(env: Env) -> None:
    """etf1 form: the key is the schedule id; schedule, tombstone, schedule again."""
    consumer = await env.start_consumer()
    first, second = _in(3), _in(5)

    def etf1(due: datetime, body: bytes) -> tuple[bytes, bytes, list[tuple[str, bytes | None]]]:
        return (b"K1", body, [
            ("scheduler-epoch", str(int(due.timestamp())).encode()),
            ("scheduler-target-topic", env.target.encode()),
        ])  # fmt: skip

    env.ingress.produce(etf1(first, b"first"), (b"K1", None, []), etf1(second, b"second"))
    fired = await asyncio.to_thread(env.fired_after, second)
    assert [m.value for m in fired] == [b"second"]
    assert (
        fired[0].header("x-scheduled-at")
        == datetime.fromtimestamp(int(second.timestamp()), UTC).isoformat()
    )
    assert fired[0].timestamp_ms >= int(second.timestamp()) * 1000  # never early
    assert consumer.stats.cancelled == 1
    assert consumer.stats.scheduled == 2


async def test_a_newer_message_replaces_the_pending_one(env: Env) -> None:
    consumer = await env.start_consumer()
    due, newer_due = _in(3), _in(4)
    env.ingress.produce(env.native("K2", due, b"old"), env.native("K2", newer_due, b"new"))
    fired = await asyncio.to_thread(env.fired_after, newer_due)
    assert [m.value for m in fired] == [b"new"]
    assert fired[0].timestamp_ms >= int(newer_due.timestamp() * 1000)
    assert (consumer.stats.scheduled, consumer.stats.replaced) == (1, 1)


async def test_redelivery_of_a_fired_message_does_not_fire_again(env: Env) -> None:
    """A consumer that crashed before committing reads the same messages again: here a
    second group reads the same partition and offsets."""
    first = await env.start_consumer()
    due = _in(1)
    env.ingress.produce(env.native("K3", due, b"once"))
    [msg] = await asyncio.to_thread(env.reader.read, 1, 30)
    assert msg.value == b"once"

    async def settled() -> bool:
        event = await env.near.get("K3")
        return event is not None and event.status is EventStatus.COMPLETED

    await until(settled)
    again = await env.start_consumer(group=f"{env.ingress.group}-replay")
    await until(lambda: _counted(again))
    assert again.stats.duplicates == 1 and again.stats.scheduled == 0
    assert first.stats.scheduled == 1
    assert len(await asyncio.to_thread(env.reader.read_for, 1.5)) == 1


async def _counted(consumer: DelayedEventsConsumer) -> bool:
    return consumer.stats.duplicates + consumer.stats.scheduled > 0


async def test_a_far_event_in_clickhouse_is_replaced_by_a_near_one(env: Env) -> None:
    await env.start_consumer()
    far_due, near_due = _in(2 * 3600), _in(3)
    env.ingress.produce(env.native("K4", far_due, b"far"))

    async def in_clickhouse() -> bool:
        return await env.far.get("K4") is not None

    await until(in_clickhouse)
    assert await env.near.get("K4") is None
    env.ingress.produce(env.native("K4", near_due, b"near"))
    fired = await asyncio.to_thread(env.fired_after, near_due)
    assert [m.value for m in fired] == [b"near"]
    stored = await env.far.get("K4")
    assert stored is not None and stored.status is EventStatus.CANCELLED  # never fires later


async def test_far_versions_replace_each_other_and_a_redelivery_changes_nothing(
    env: Env,
) -> None:
    consumer = await env.start_consumer()
    one, two = _in(2 * 3600), _in(3 * 3600)
    env.ingress.produce(env.native("K5", one, b"v1"), env.native("K5", two, b"v2"))

    async def both() -> bool:
        return consumer.stats.scheduled + consumer.stats.replaced == 2

    await until(both)
    stored = await env.far.get("K5")
    assert stored is not None
    assert (stored.body, stored.status) == (b"v2", EventStatus.PENDING)
    assert stored.scheduled_at == datetime.fromtimestamp(int(two.timestamp() * 1000) / 1000, UTC)
    replay = await env.start_consumer(group=f"{env.ingress.group}-replay")

    async def replayed() -> bool:
        return replay.stats.duplicates + replay.stats.scheduled + replay.stats.replaced == 2

    await until(replayed)
    # ClickHouse compares versions by content: the replay re-applies v1, then v2, in order,
    # and ends where it was (nothing there is due before the replay is over).
    stored = await env.far.get("K5")
    assert stored is not None
    assert (stored.body, stored.status) == (b"v2", EventStatus.PENDING)
    assert (await env.far.counts())["pending"] == 1
    # A near message then takes the event out of ClickHouse.
    near_due = _in(2)
    env.ingress.produce(env.native("K5", near_due, b"v3"))
    fired = await asyncio.to_thread(env.fired_after, near_due)
    assert [m.value for m in fired] == [b"v3"]


# --- HTTP: POST stays insert-if-absent; PUT with a full event replaces whatever state


@pytest.fixture
async def http(env: Env) -> AsyncIterator[httpx.AsyncClient]:
    """The API served (uvicorn, loopback socket) on this loop, over ``env``'s service."""
    app = create_app(
        env.service, analytics=None, health=StaticHealth(), metrics=Metrics(), api_keys=()
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await until(lambda: _started(server))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        yield client
    server.should_exit = True
    await task


async def _started(server: uvicorn.Server) -> bool:
    return bool(server.started)


def _event_body(env: Env, due: datetime, body: str) -> dict[str, object]:
    return {"topic": env.target, "body": body, "scheduled_at": due.isoformat()}


async def test_http_put_replaces_in_either_tier_and_schedules_again_after_firing(
    env: Env, http: httpx.AsyncClient
) -> None:
    url = "/api/v1/schedules/H1"
    far = await http.put(url, json=_event_body(env, _in(2 * 3600), "far"))
    assert (far.status_code, far.json()["outcome"]) == (200, "created")
    assert (await env.far.get("H1")) is not None
    repost = await http.post("/api/v1/schedules", json={
        **_event_body(env, _in(1), "ignored"), "schedule_id": "H1"})  # fmt: skip
    assert repost.json()["created"] is False  # POST never changes an existing id

    due = _in(2)
    body = _event_body(env, due, "near")
    assert (await http.put(url, json=body)).json()["outcome"] == "replaced"
    assert (await http.put(url, json=body)).json()["outcome"] == "unchanged"  # a retry
    fired = await asyncio.to_thread(env.fired_after, due)
    assert [m.value for m in fired] == [b"near"]

    async def completed() -> bool:
        event = await env.near.get("H1")
        return event is not None and event.status is EventStatus.COMPLETED

    await until(completed)
    assert (await http.put(url, json=body)).json()["outcome"] == "unchanged"  # fired already
    again = _in(1)
    put = await http.put(url, json=_event_body(env, again, "again"))
    assert put.json()["outcome"] == "scheduled_again"
    fired = await asyncio.to_thread(env.fired_after, again)
    assert [m.value for m in fired] == [b"near", b"again"]
    moved = await http.put(url, json={"delay_seconds": 60})  # still a reschedule
    assert moved.status_code == 409  # it fired: nothing pending to move
    wrong = await http.put(url, json={**_event_body(env, again, "x"), "schedule_id": "other"})
    assert wrong.status_code == 422

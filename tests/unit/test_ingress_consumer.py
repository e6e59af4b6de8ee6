"""The ingress loop against in-memory fakes: commit order, dead letters, pause and resume."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import pytest

from delayline.adapters.kafka_consumer import KafkaMessage
from delayline.clock import SystemClock
from delayline.domain.events import ScheduledEvent
from delayline.errors import is_unavailable
from delayline.ports import NearTermStore
from delayline.services.ingress import DelayedEventsConsumer
from delayline.services.scheduler import SchedulerService

OK = [("x-topic", b"t"), ("x-delay-seconds", b"60")]


def msg(offset: int, value: bytes | None = b"v", headers: Any = None, partition: int = 0,
        key: bytes | None = None) -> KafkaMessage:  # fmt: skip
    hdrs = tuple(OK if headers is None else headers)
    return KafkaMessage("delayed", partition, offset, key, value, hdrs, 1_900_000_000_000)


class FakeNear:
    """Just schedule/cancel, with failure injection."""

    def __init__(self) -> None:
        self.events: dict[str, ScheduledEvent] = {}
        self.revisions: dict[str, str] = {}
        self.cancelled: list[str] = []
        self.down = False
        self.poison: set[bytes] = set()

    async def schedule(self, events: Sequence[ScheduledEvent]) -> list[bool]:
        if self.down:
            raise ConnectionError("redis is down")
        if any(e.body in self.poison for e in events):
            raise ValueError("refused")
        out = []
        for e in events:
            out.append(e.schedule_id not in self.events)
            self.events.setdefault(e.schedule_id, e)
        return out

    async def upsert(self, items: Sequence[tuple[ScheduledEvent, str, bool]]) -> list[int]:
        """Like the Redis script, without tiers, leases or positions: a message hash seen
        before is ignored."""
        await self.schedule([])
        if any(e.body in self.poison for e, _, _ in items):
            raise ValueError("refused")
        codes = []
        for event, revision, _ in items:
            known = self.revisions.get(event.schedule_id)
            same = known is not None and known.partition("#")[2] == revision.partition("#")[2]
            codes.append(0 if same else 2 if event.schedule_id in self.events else 1)
            self.events[event.schedule_id] = event
            self.revisions[event.schedule_id] = revision
        return codes

    async def cancel(self, schedule_id: str) -> bool:
        if self.down:
            raise ConnectionError("redis is down")
        self.cancelled.append(schedule_id)
        return self.events.pop(schedule_id, None) is not None


class FakeSource:
    def __init__(self, near: FakeNear, batches: list[list[KafkaMessage]]) -> None:
        self.near = near
        self.batches = batches
        self.commits: list[dict[tuple[str, int], int]] = []
        self.stored_at_commit: list[set[str]] = []
        self.dead: list[tuple[KafkaMessage, str]] = []
        self.dlq_down = False
        self.refuse: set[int] = set()
        self.paused = False
        self.pause_calls = 0
        self.revoked: set[tuple[str, int]] = set()
        self.started = self.stopped = 0
        self.lag: int | None = None

    async def start(self) -> None:
        self.started += 1

    async def stop(self) -> None:
        self.stopped += 1

    async def poll(self, max_messages: int, timeout: float) -> list[KafkaMessage]:
        await asyncio.sleep(0.001)
        if self.paused or not self.batches:
            return []
        return self.batches.pop(0)

    async def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        self.commits.append(dict(offsets))
        self.stored_at_commit.append(set(self.near.events))

    async def pause(self) -> None:
        self.paused = True
        self.pause_calls += 1

    async def resume(self) -> None:
        self.paused = False

    def take_revoked(self) -> set[tuple[str, int]]:
        out, self.revoked = self.revoked, set()
        return out

    async def dead_letter(self, items: Sequence[tuple[Any, str]]) -> list[tuple[Any, str]]:
        if self.dlq_down:
            raise OSError("broker down")
        refused = [(m, "MSG_SIZE_TOO_LARGE") for m, _ in items if m.offset in self.refuse]
        self.dead.extend(item for item in items if item[0].offset not in self.refuse)
        return refused


def make(batches: list[list[KafkaMessage]]) -> tuple[DelayedEventsConsumer, FakeNear, FakeSource]:
    near = FakeNear()
    source = FakeSource(near, batches)
    service = SchedulerService(cast(NearTermStore, near), SystemClock())
    consumer = DelayedEventsConsumer(service, source, retry_initial=0.001, retry_max=0.01)
    return consumer, near, source


async def until(cond: Callable[[], bool]) -> None:
    for _ in range(5000):
        if cond():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never became true")


async def test_good_and_bad_messages_then_commit() -> None:
    batch = [msg(0), msg(1, headers=[("x-topic", b"t")]), msg(2, partition=1), msg(3)]
    consumer, _, source = make([batch])
    async with consumer:
        await until(lambda: bool(source.commits))
    assert source.commits == [{("delayed", 0): 4, ("delayed", 1): 3}]
    assert len(source.stored_at_commit[0]) == 3  # stored before the commit
    [(bad, reason)] = source.dead
    assert bad.offset == 1
    assert reason.startswith("missing_header")
    s = consumer.stats
    assert (s.consumed, s.scheduled, s.dead_lettered, s.batches) == (4, 3, 1, 1)
    assert s.dead_letter_reasons == {"missing_header": 1}
    assert (source.started, source.stopped) == (1, 1)


async def test_store_down_pauses_without_commit_then_resumes() -> None:
    consumer, near, source = make([[msg(0), msg(1)], [msg(2)]])
    near.down = True
    await consumer.start()
    try:
        await until(lambda: source.pause_calls >= 1)
        assert consumer.stats.paused
        assert source.commits == []
        assert near.events == {}
        near.down = False
        await until(lambda: len(source.commits) == 2)
    finally:
        await consumer.stop()
    assert source.commits == [{("delayed", 0): 2}, {("delayed", 0): 3}]
    assert not consumer.stats.paused
    assert consumer.stats.scheduled == 3
    assert consumer.stats.consumed == 3


async def test_dead_letter_failure_blocks_commit_until_it_works() -> None:
    consumer, _, source = make([[msg(0), msg(1, value=b"x", headers=[])]])
    source.dlq_down = True
    await consumer.start()
    try:
        await until(lambda: source.pause_calls >= 1)
        assert source.commits == []
        source.dlq_down = False
        await until(lambda: bool(source.commits))
    finally:
        await consumer.stop()
    assert len(source.dead) == 1
    assert consumer.stats.scheduled == 1  # the retried batch stored nothing twice
    assert consumer.stats.duplicates >= 1


async def test_store_refusing_one_event_dead_letters_only_it() -> None:
    consumer, near, source = make(
        [[msg(0, value=b"a"), msg(1, value=b"poison"), msg(2, value=b"c")]]
    )
    near.poison.add(b"poison")
    async with consumer:
        await until(lambda: bool(source.commits))
    assert sorted(e.body for e in near.events.values()) == [b"a", b"c"]
    [(bad, reason)] = source.dead
    assert bad.offset == 1
    assert reason.startswith("store_rejected")


async def test_schedule_then_tombstone_in_one_batch_keeps_order() -> None:
    sched = msg(0, headers=[*OK, ("x-schedule-id", b"s1")])
    consumer, near, source = make(
        [[sched, msg(1, value=None, key=b"s1"), msg(2, value=None, key=b"nope")]]
    )
    async with consumer:
        await until(lambda: bool(source.commits))
    assert near.events == {}
    assert near.cancelled == ["s1", "nope"]
    assert (consumer.stats.cancelled, consumer.stats.cancel_missed) == (1, 1)


async def test_revoked_partitions_are_dropped_from_a_held_batch() -> None:
    consumer, near, source = make([[msg(0, partition=0), msg(0, partition=1)]])
    near.down = True
    await consumer.start()
    try:
        await until(lambda: source.pause_calls >= 1)
        source.revoked = {("delayed", 1)}
        await asyncio.sleep(0.02)
        near.down = False
        await until(lambda: bool(source.commits))
    finally:
        await consumer.stop()
    assert source.commits == [{("delayed", 0): 1}]


async def test_stop_is_idempotent() -> None:
    consumer, _, source = make([])
    await consumer.start()
    await consumer.stop()
    await consumer.stop()
    assert source.stopped == 1


@pytest.mark.parametrize(
    ("exc", "expected"),
    [(ConnectionError(), True), (TimeoutError(), True), (ValueError(), False), (KeyError(), False)],
)
def test_is_unavailable(exc: BaseException, expected: bool) -> None:
    assert is_unavailable(exc) is expected


def test_is_unavailable_knows_redis_errors() -> None:
    from redis.exceptions import BusyLoadingError, ResponseError
    from redis.exceptions import ConnectionError as RedisConnectionError

    assert is_unavailable(RedisConnectionError("x"))
    assert is_unavailable(BusyLoadingError("x"))
    assert not is_unavailable(ResponseError("x"))


async def test_unreadable_headers_cost_only_their_message() -> None:
    bad = KafkaMessage("delayed", 0, 1, b"k", b"B", (), 1, header_error="a header key is not UTF-8")
    consumer, near, source = make([[msg(0, value=b"A"), bad, msg(2, value=b"C")]])
    async with consumer:
        await until(lambda: bool(source.commits))
    assert sorted(e.body for e in near.events.values()) == [b"A", b"C"]
    [(dead, reason)] = source.dead
    assert dead.offset == 1
    assert reason == "invalid_header: a header key is not UTF-8"
    assert source.commits == [{("delayed", 0): 3}]


async def test_a_dead_letter_refused_for_good_is_skipped_not_retried() -> None:
    consumer, _, source = make([[msg(0, headers=[]), msg(1)]])
    source.refuse = {0}
    async with consumer:
        await until(lambda: bool(source.commits))
    assert source.commits == [{("delayed", 0): 2}]
    assert source.pause_calls == 0
    s = consumer.stats
    assert (s.dead_letter_refused, s.dead_lettered, s.scheduled, s.retries) == (1, 0, 1, 0)
    assert s.dead_letter_reasons == {}
    assert s.stalled_since is None


async def test_a_stalled_batch_shows_until_it_passes() -> None:
    consumer, near, source = make([[msg(0)]])
    near.down = True
    await consumer.start()
    try:
        await until(lambda: consumer.stats.retries >= 2)
        assert consumer.stats.stalled_since is not None
        assert consumer.stats.stalled_seconds() >= 0
        near.down = False
        await until(lambda: bool(source.commits))
        await until(lambda: consumer.stats.stalled_since is None)
    finally:
        await consumer.stop()
    assert consumer.stats.stalled_seconds() == 0


async def test_ignored_messages_are_counted_by_reason(caplog: pytest.LogCaptureFixture) -> None:
    sid = [*OK, ("x-schedule-id", b"same")]
    batch = [msg(0, headers=sid), msg(1, headers=sid), msg(2, value=None, key=b"unknown-id")]
    consumer, _, source = make([batch])
    with caplog.at_level("INFO", logger="delayline.services.ingress"):
        async with consumer:
            await until(lambda: bool(source.commits))
    assert consumer.stats.ignored_reasons == {"duplicate": 1, "cancel_missed": 1}
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ignored")]
    assert any("delayed:0@1 (duplicate)" in line and "'same'" in line for line in lines)
    assert any("delayed:0@2 (cancel_missed)" in line and "unknown-id" in line for line in lines)

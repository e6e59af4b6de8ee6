"""The circuit breaker's states, driven by a fake clock."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from delayline.adapters.guarded import GuardedLifecycleStore, GuardedPublisher
from delayline.domain.events import InvalidEventError, ScheduledEvent, new_event
from delayline.domain.outcomes import Delivery, EventFilter, LifecycleEntry
from delayline.errors import DependencyUnavailable, ErrorClass, PublishError
from delayline.resilience import BreakerState, CircuitBreaker

EVENT = new_event(topic="t", scheduled_at=datetime(2030, 1, 1, tzinfo=UTC))


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _breaker(clock: FakeTime, changes: list[str] | None = None) -> CircuitBreaker:
    return CircuitBreaker(
        "redis",
        failure_threshold=3,
        reset_timeout=2,
        max_reset_timeout=8,
        success_threshold=2,
        clock=clock,
        on_change=lambda _n, s: (changes if changes is not None else []).append(s),
    )


def _state(breaker: CircuitBreaker) -> BreakerState:
    return breaker.state  # a call, so mypy does not narrow across state changes


async def _down() -> None:
    raise ConnectionError("refused")


async def _ok() -> str:
    return "ok"


async def test_opens_after_repeated_unavailability_and_fails_fast() -> None:
    clock = FakeTime()
    breaker = _breaker(clock)
    for _ in range(3):
        with pytest.raises(DependencyUnavailable):
            await breaker.call(_down)
    assert _state(breaker) is BreakerState.OPEN
    with pytest.raises(DependencyUnavailable, match="circuit open"):
        await breaker.call(_ok)


async def test_half_open_probes_then_gradual_recovery() -> None:
    clock = FakeTime()
    changes: list[str] = []
    breaker = _breaker(clock, changes)
    for _ in range(3):
        with pytest.raises(DependencyUnavailable):
            await breaker.call(_down)
    clock.now = 2.0
    assert _state(breaker) is BreakerState.HALF_OPEN
    assert await breaker.call(_ok) == "ok"
    assert _state(breaker) is BreakerState.HALF_OPEN  # one success is not enough
    assert await breaker.call(_ok) == "ok"
    assert _state(breaker) is BreakerState.CLOSED
    assert changes == ["open", "half_open", "closed"]


async def test_failed_probe_reopens_with_a_longer_timeout() -> None:
    clock = FakeTime()
    breaker = _breaker(clock)
    for _ in range(3):
        with pytest.raises(DependencyUnavailable):
            await breaker.call(_down)
    clock.now = 2.0
    with pytest.raises(DependencyUnavailable):
        await breaker.call(_down)
    assert _state(breaker) is BreakerState.OPEN
    clock.now = 5.0  # 3 s later: the timeout doubled to 4 s
    assert _state(breaker) is BreakerState.OPEN
    clock.now = 6.0
    assert _state(breaker) is BreakerState.HALF_OPEN


async def test_half_open_admits_only_limited_probes() -> None:
    clock = FakeTime()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now = 2.0
    assert breaker.allow()
    assert not breaker.allow()


async def test_bad_input_does_not_count_as_failure() -> None:
    breaker = _breaker(FakeTime())

    async def bad() -> None:
        raise InvalidEventError("topic", "invalid")

    for _ in range(5):
        with pytest.raises(InvalidEventError):
            await breaker.call(bad)
    assert _state(breaker) is BreakerState.CLOSED


class History:
    """A lifecycle store that can be taken down."""

    def __init__(self) -> None:
        self.up = True

    async def write_entries(self, entries: Sequence[LifecycleEntry]) -> None:
        self._check()

    async def history(self, schedule_id: str) -> list[LifecycleEntry]:
        self._check()
        return []

    async def histories(self, ids: Sequence[str]) -> dict[str, list[LifecycleEntry]]:
        self._check()
        return {}

    async def find(self, match: EventFilter, *, after: str = "", limit: int = 100) -> list[str]:
        self._check()
        if limit < 1:
            raise ValueError("limit must be positive")
        return [after]

    def _check(self) -> None:
        if not self.up:
            raise ConnectionError("down")


async def test_guarded_adapter_converts_outages() -> None:
    store = History()
    guarded = GuardedLifecycleStore(store, _breaker(FakeTime()))
    assert await guarded.find(EventFilter(), after="a") == ["a"]  # keyword arguments pass
    with pytest.raises(ValueError, match="positive"):  # bad input passes through as it is
        await guarded.find(EventFilter(), limit=0)
    assert _state(guarded.breaker) is BreakerState.CLOSED
    store.up = False
    with pytest.raises(DependencyUnavailable, match="redis is unavailable"):
        await guarded.history("a")


class Publisher:
    def __init__(self) -> None:
        self.calls = 0
        self.result: BaseException | Delivery = Delivery(1.0, 0, 0)

    async def publish(self, events: Sequence[ScheduledEvent]) -> list[BaseException | Delivery]:
        self.calls += 1
        return [self.result for _ in events]


async def test_guarded_publisher_opens_on_delivery_failures() -> None:
    publisher = Publisher()
    publisher.result = PublishError("_TRANSPORT", ErrorClass.UNAVAILABLE)
    guarded = GuardedPublisher(publisher, _breaker(FakeTime()))
    for _ in range(3):
        await guarded.publish([EVENT])
    assert _state(guarded.breaker) is BreakerState.OPEN
    results = await guarded.publish([EVENT, EVENT])
    assert publisher.calls == 3  # not called while open
    assert all(isinstance(r, DependencyUnavailable) for r in results)


async def test_a_probe_that_never_reports_does_not_block_forever() -> None:
    clock = FakeTime()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now = 2.0
    assert breaker.allow()  # the probe goes out and never comes back
    assert not breaker.allow()
    clock.now = 4.0  # a whole reset timeout later, another probe may go
    assert breaker.allow()


async def test_a_publish_that_raises_counts_as_a_failure() -> None:
    class Broken:
        async def publish(self, events: Sequence[ScheduledEvent]) -> list[BaseException | Delivery]:
            raise RuntimeError("producer is being rebuilt")

    clock = FakeTime()
    guarded = GuardedPublisher(Broken(), _breaker(clock))
    for _ in range(3):
        with pytest.raises(RuntimeError):
            await guarded.publish([EVENT])
    assert _state(guarded.breaker) is BreakerState.OPEN

"""A full connection pool is back-pressure: it never counts against a breaker. Results handed
from the firing thread reach their sink on the loop that owns it."""

from __future__ import annotations

import asyncio
import threading

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError

from delayline.errors import DependencyBusy, ErrorClass, classify, is_pool_exhausted
from delayline.firing_runtime import LoopSink
from delayline.resilience import BreakerState, CircuitBreaker


def _pool_wait_timed_out() -> RedisConnectionError:
    try:
        try:
            raise TimeoutError
        except TimeoutError as err:
            raise RedisConnectionError("No connection available.") from err
    except RedisConnectionError as exc:
        return exc


@pytest.mark.parametrize(
    "error", [MaxConnectionsError("Too many connections"), _pool_wait_timed_out()]
)
async def test_a_full_pool_never_opens_the_breaker(error: Exception) -> None:
    breaker = CircuitBreaker("redis", failure_threshold=2)

    async def call() -> None:
        raise error

    for _ in range(10):
        with pytest.raises(DependencyBusy):
            await breaker.call(call)
    assert breaker.state is BreakerState.CLOSED


async def test_a_refused_connection_still_opens_it() -> None:
    breaker = CircuitBreaker("redis", failure_threshold=2)

    async def call() -> None:
        raise RedisConnectionError("Connection refused")

    for _ in range(2):
        with pytest.raises(Exception, match="unavailable"):
            await breaker.call(call)
    assert breaker.state is BreakerState.OPEN


def test_pool_exhaustion_is_told_apart_and_retried_like_an_outage() -> None:
    assert is_pool_exhausted(_pool_wait_timed_out())
    assert not is_pool_exhausted(RedisConnectionError("No connection available."))  # no wait
    assert not is_pool_exhausted(RedisConnectionError("Connection refused"))
    assert classify(DependencyBusy("redis")) is ErrorClass.UNAVAILABLE


async def test_loop_sink_hands_results_from_another_thread_to_the_owning_loop() -> None:
    loop = asyncio.get_running_loop()
    seen: list[tuple[object, int | None]] = []

    class Recorder:
        def record(self, result: object) -> None:
            seen.append((result, threading.get_ident()))

    sink = LoopSink(Recorder(), loop)
    sent = [object() for _ in range(50)]

    def firing_thread() -> None:
        for result in sent:
            sink.record(result)  # type: ignore[arg-type]

    await asyncio.to_thread(firing_thread)
    for _ in range(100):
        if len(seen) == len(sent):
            break
        await asyncio.sleep(0.01)
    assert [r for r, _ in seen] == sent
    assert {thread for _, thread in seen} == {threading.get_ident()}

"""Circuit breakers: one per dependency, put in front of its adapters by
:mod:`delayline.adapters.guarded`.

A breaker per dependency (Redis, ClickHouse, Kafka producer, Kafka consumer):

- **closed**: calls go through; ``failure_threshold`` consecutive failures of class
  ``UNAVAILABLE`` (see :mod:`delayline.errors`) open it. Bad input never counts.
- **open**: calls fail at once with :class:`DependencyUnavailable` (HTTP 503 + ``Retry-After``,
  the consumer pauses, the dispatcher waits) instead of piling up timeouts.
- **half-open** after ``reset_timeout``: up to ``half_open_max_calls`` probes go through;
  ``success_threshold`` successes close it (gradual recovery), one failure opens it again
  with a doubled timeout (up to ``max_reset_timeout``).

A full connection pool (:func:`delayline.errors.is_pool_exhausted`) is neither a success nor a
failure: the call fails with :class:`DependencyBusy` and the breaker's counts stay as they were.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any, TypeVar

from delayline.backoff import backoff_ceiling
from delayline.errors import (
    DependencyBusy,
    DependencyUnavailable,
    ErrorClass,
    StorageFull,
    classify,
    is_pool_exhausted,
    unavailable,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


class BreakerState(StrEnum):
    """The three states of a circuit breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """A small async circuit breaker (see the module docstring)."""

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 2.0,
        max_reset_timeout: float = 30.0,
        half_open_max_calls: int = 1,
        success_threshold: int = 2,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, str], None] | None = None,
    ) -> None:
        self.name = name
        self._failure_threshold = failure_threshold
        self._base_timeout = reset_timeout
        self._max_timeout = max_reset_timeout
        self._timeout = reset_timeout
        self._reopened = 0  # half-open probes failed in a row: doubles the timeout
        self._half_open_max = half_open_max_calls
        self._success_threshold = success_threshold
        self._clock = clock
        self._on_change = on_change or (lambda _name, _state: None)
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._successes = 0
        self._probes = 0
        self._probe_started = 0.0
        self._opened_at = 0.0

    @property
    def state(self) -> BreakerState:
        """The current state (an open breaker turns half-open once its timeout passed)."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self._timeout:
            self._set(BreakerState.HALF_OPEN)
        return self._state

    def _set(self, state: BreakerState) -> None:
        if state is self._state:
            return
        log.warning("circuit breaker %s: %s -> %s", self.name, self._state, state)
        self._state = state
        self._successes = 0
        self._probes = 0
        self._on_change(self.name, state.value)

    def allow(self) -> bool:
        """Whether a call may go through now (a half-open breaker admits a few probes)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN:
            if self._probes >= self._half_open_max and (
                self._clock() - self._probe_started >= self._timeout
            ):
                self._probes = 0  # a probe that never reported back must not block forever
            if self._probes < self._half_open_max:
                self._probes += 1
                self._probe_started = self._clock()
                return True
        return False

    def release(self) -> None:
        """A call admitted by :meth:`allow` ended without an outcome (e.g. cancelled)."""
        if self._state is BreakerState.HALF_OPEN:
            self._probes = max(0, self._probes - 1)

    def record_success(self) -> None:
        """A call succeeded."""
        self._failures = 0
        if self._state is BreakerState.HALF_OPEN:
            self._probes = max(0, self._probes - 1)
            self._successes += 1
            if self._successes >= self._success_threshold:
                self._reopened = 0
                self._timeout = self._base_timeout
                self._set(BreakerState.CLOSED)

    def record_failure(self) -> None:
        """A call failed because the dependency is unavailable."""
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN:
            self._reopened += 1
            self._timeout = backoff_ceiling(self._reopened, self._base_timeout, self._max_timeout)
            self._open()
        elif self._state is BreakerState.CLOSED and self._failures >= self._failure_threshold:
            self._open()

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._set(BreakerState.OPEN)

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` through the breaker; unavailability becomes :class:`DependencyUnavailable`."""
        if not self.allow():
            raise DependencyUnavailable(self.name, "circuit open")
        try:
            result = await fn(*args, **kwargs)
        except DependencyBusy:
            self.release()
            raise
        except DependencyUnavailable:
            self.record_failure()
            raise
        except asyncio.CancelledError:
            self.release()
            raise
        except Exception as exc:
            if is_pool_exhausted(exc):
                self.release()
                raise DependencyBusy(self.name, "every connection is in use") from exc
            if classify(exc) is ErrorClass.UNAVAILABLE:
                error = unavailable(self.name, exc)
                if isinstance(error, StorageFull):
                    self.record_success()  # it answered at once (and reads still work)
                else:
                    self.record_failure()
                raise error from exc
            self.record_success()  # the dependency answered; the call itself was wrong
            raise
        self.record_success()
        return result

"""Error classification: the one place that decides whether a failure is retried.

- ``UNAVAILABLE``: a dependency is down or unreachable (broker, Redis, ClickHouse). Retried with
  backoff for as long as the event may still fire (its ``max_delay_seconds``); never counted
  against the event, because the event did nothing wrong.
- ``TRANSIENT``: this attempt failed but another may succeed. Retried with backoff up to
  ``max_publish_attempts``.
- ``PERMANENT``: retrying cannot help (message too large, topic not authorized). The event
  fails with its error; a Kafka message goes to the dead-letter topic.
- ``BAD_INPUT``: the caller's data is wrong: 4xx or dead-letter, never retried.
"""

from __future__ import annotations

import asyncio
import random
from enum import StrEnum


class ErrorClass(StrEnum):
    """How a failure is handled; see the module docstring."""

    UNAVAILABLE = "unavailable"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    BAD_INPUT = "bad_input"


class DependencyUnavailable(Exception):
    """A store or the broker cannot be reached; the operation stored nothing."""

    def __init__(self, dependency: str, detail: str = "") -> None:
        super().__init__(f"{dependency} is unavailable" + (f": {detail}" if detail else ""))
        self.dependency = dependency


class PublishError(Exception):
    """The broker refused or could not take one message."""

    def __init__(self, message: str, error_class: ErrorClass, code: int | None = None) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.code = code


def classify(exc: BaseException) -> ErrorClass:
    """The class of ``exc`` (see the module docstring)."""
    from delayline.domain.events import InvalidEventError

    if isinstance(exc, PublishError):
        return exc.error_class
    if isinstance(exc, DependencyUnavailable):
        return ErrorClass.UNAVAILABLE
    if isinstance(exc, InvalidEventError):
        return ErrorClass.BAD_INPUT
    if isinstance(exc, ConnectionError | TimeoutError | asyncio.TimeoutError | OSError):
        return ErrorClass.UNAVAILABLE
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError:  # pragma: no cover - redis is a dependency
        return ErrorClass.TRANSIENT
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return ErrorClass.UNAVAILABLE
    return ErrorClass.TRANSIENT


def backoff_delay(attempt: int, initial: float, maximum: float) -> float:
    """Exponential backoff with jitter: a random delay in [½, 1] × min(max, initial·2^attempt)."""
    ceiling: float = min(maximum, initial * (2 ** min(attempt, 30)))
    return ceiling * (0.5 + random.random() / 2)

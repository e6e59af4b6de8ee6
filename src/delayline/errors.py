"""Error classification: the one place that decides whether a failure is retried.

- ``UNAVAILABLE``: a dependency is down or unreachable (broker, Redis, ClickHouse). Retried with
  backoff for as long as the event may still fire (its ``max_delay_seconds``); never counted
  against the event, because the event did nothing wrong.
- ``TRANSIENT``: this attempt failed but another may succeed. Retried with backoff up to
  ``max_publish_attempts``.
- ``PERMANENT``: retrying cannot help (message too large, topic not authorized). The event
  fails with its error; a Kafka message goes to the dead-letter topic.
- ``BAD_INPUT``: the caller's data is wrong: 4xx or dead-letter, never retried.

Three kinds of unavailability say more than "not stored": :class:`StorageFull` (a store cannot
persist: disk full, Valkey ``MISCONF``, chDB ``NOT_ENOUGH_SPACE``), :class:`OutcomeUnknown`
(a write was sent but its answer never came: it may be stored) and
:class:`PartlyAcknowledged` (an acknowledgement reached some shards only). :func:`unavailable`
builds the first two from the underlying error.

A connection pool that stays full past its wait bound is back-pressure, not an outage: it
raises :class:`DependencyBusy`, retried like ``UNAVAILABLE`` but never counted by a breaker.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Sequence
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


class StorageFull(DependencyUnavailable):
    """A store refused a write because it cannot persist it (disk full); nothing was stored."""

    def __init__(self, dependency: str, detail: str = "") -> None:
        super().__init__(dependency, detail)
        self.detail = detail


class OutcomeUnknown(DependencyUnavailable):
    """A write reached (or may have reached) the store but its answer never came: it may or may
    not be stored. Retrying with the same schedule id is safe (scheduling is idempotent)."""

    def __init__(self, dependency: str, detail: str = "") -> None:
        super().__init__(dependency, detail)
        self.schedule_ids: list[str] = []


class PartlyAcknowledged(DependencyUnavailable):
    """An acknowledgement spanning shards reached some of them only: ``acknowledged`` events
    were still leased on the shards that answered; the events in ``remaining`` are on shards
    that could not be reached (send them again; the others are done)."""

    def __init__(self, acknowledged: int, remaining: Sequence[str], cause: BaseException) -> None:
        super().__init__("redis", f"{len(remaining)} acknowledgement(s) not delivered: {cause}")
        self.acknowledged = acknowledged
        self.remaining = tuple(remaining)


# What the stores say when their disk is full or they refuse writes they cannot persist.
_DISK_FULL_MARKERS = ("MISCONF", "NOT_ENOUGH_SPACE", "No space left on device", "ENOSPC")
# redis-py's messages for a connection lost after the command may have been sent.
_UNKNOWN_OUTCOME_MARKERS = ("Timeout reading", "Connection closed by server", "Error while reading")


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says a store cannot persist writes (disk full or unwritable)."""
    if isinstance(exc, StorageFull):
        return True
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    text = str(exc)
    return any(marker in text for marker in _DISK_FULL_MARKERS)


def is_outcome_unknown(exc: BaseException) -> bool:
    """Whether ``exc`` is a timeout or a lost connection after a command was sent."""
    if isinstance(exc, OutcomeUnknown):
        return True
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if not isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return False
    return any(marker in str(exc) for marker in _UNKNOWN_OUTCOME_MARKERS)


def unavailable(dependency: str, exc: BaseException) -> DependencyUnavailable:
    """The :class:`DependencyUnavailable` (or the subclass saying more) for ``exc``."""
    detail = f"{type(exc).__name__}: {exc}"
    if is_disk_full(exc):
        return StorageFull(dependency, detail)
    if is_outcome_unknown(exc):
        return OutcomeUnknown(dependency, detail)
    return DependencyUnavailable(dependency, detail)


class DependencyBusy(DependencyUnavailable):
    """Every pooled connection stayed in use past the pool's wait bound: the dependency may be
    healthy, only saturated. Answered like an outage (retry later) but it never opens a breaker.
    """


def is_pool_exhausted(exc: BaseException) -> bool:
    """Whether ``exc`` says a Redis connection pool had no free connection (rather than that
    Redis failed): redis-py's ``MaxConnectionsError``, or a blocking pool's wait that timed out.
    """
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import MaxConnectionsError

    if isinstance(exc, MaxConnectionsError | DependencyBusy):
        return True
    return (
        isinstance(exc, RedisConnectionError)
        and isinstance(exc.__cause__, TimeoutError)
        and str(exc) == "No connection available."
    )


class PublishError(Exception):
    """The broker refused or could not take one message; ``timed_out`` when no answer came in
    time (the event's outcome is then recorded as a timeout, not an error)."""

    def __init__(
        self,
        message: str,
        error_class: ErrorClass,
        code: int | None = None,
        *,
        timed_out: bool = False,
    ) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.code = code
        self.timed_out = timed_out


def classify(exc: BaseException) -> ErrorClass:
    """The class of ``exc`` (see the module docstring)."""
    from delayline.domain.events import InvalidEventError

    if isinstance(exc, PublishError):
        return exc.error_class
    if isinstance(exc, DependencyUnavailable):
        return ErrorClass.UNAVAILABLE
    if isinstance(exc, InvalidEventError):
        return ErrorClass.BAD_INPUT
    if is_disk_full(exc) or isinstance(exc, unavailable_error_types()):
        return ErrorClass.UNAVAILABLE
    return ErrorClass.TRANSIENT


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means "a dependency is down" (pause and retry), not "this input is bad"."""
    return classify(exc) is ErrorClass.UNAVAILABLE


def unavailable_error_types() -> tuple[type[Exception], ...]:
    """The exception types that say "a dependency cannot serve now" whatever their message:
    ours, the operating system's (``ConnectionError``, ``TimeoutError`` are ``OSError``) and
    Redis's (down, loading, failing over)."""
    from redis.exceptions import ClusterDownError, TryAgainError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    # BusyLoadingError is a redis ConnectionError; MasterDownError is a ClusterDownError.
    return (
        DependencyUnavailable,
        OSError,
        asyncio.TimeoutError,
        RedisConnectionError,
        RedisTimeoutError,
        ClusterDownError,
        TryAgainError,
    )

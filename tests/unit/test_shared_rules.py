"""The rules with one home: error classification, backoff, the delay limit, the wire contract."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from typing import cast

import pytest
from confluent_kafka import KafkaError
from redis.exceptions import BusyLoadingError, ClusterDownError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError

from delayline.adapters.kafka_producer import classify_kafka_error
from delayline.backoff import backoff_ceiling, backoff_delay
from delayline.clock import SystemClock
from delayline.domain.events import InvalidEventError
from delayline.domain.limits import MAX_DELAY_SECONDS, due_after
from delayline.errors import DependencyUnavailable, is_unavailable
from delayline.ports import NearTermStore
from delayline.services.scheduler import SchedulerService

NOW = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConnectionError(), True),
        (TimeoutError(), True),
        (DependencyUnavailable("redis"), True),
        (RedisConnectionError("x"), True),
        (BusyLoadingError("x"), True),
        (ClusterDownError("x"), True),
        (TryAgainError("x"), True),
        (ResponseError("x"), False),
        (ValueError(), False),
        (InvalidEventError("topic", "bad"), False),
    ],
)
def test_is_unavailable_decides_outages(exc: BaseException, expected: bool) -> None:
    assert is_unavailable(exc) is expected


def test_a_publish_error_says_when_it_timed_out() -> None:
    assert classify_kafka_error(KafkaError(KafkaError._MSG_TIMED_OUT)).timed_out
    assert not classify_kafka_error(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)).timed_out


def test_backoff_doubles_up_to_its_maximum_with_jitter() -> None:
    assert [backoff_ceiling(n, 0.5, 3.0) for n in range(4)] == [0.5, 1.0, 2.0, 3.0]
    assert backoff_ceiling(10_000, 0.5, 3.0) == 3.0
    assert all(1.0 <= backoff_delay(1, 1.0, 60.0) <= 2.0 for _ in range(100))


@pytest.mark.parametrize(
    "delay", [-1, -0.001, MAX_DELAY_SECONDS + 1, float("nan"), float("inf"), True, "5", None]
)
def test_due_after_refuses_delays_outside_the_limit(delay: object) -> None:
    with pytest.raises(ValueError, match="seconds between 0 and"):
        due_after(NOW, delay)


def test_due_after_adds_the_delay_in_utc() -> None:
    assert due_after(NOW, 90) == datetime(2030, 1, 1, 0, 1, 30, tzinfo=UTC)
    assert due_after(NOW.replace(tzinfo=None), 0) == NOW
    with pytest.raises(ValueError, match="year 2999"):
        due_after(datetime(2990, 1, 1, tzinfo=UTC), MAX_DELAY_SECONDS)


def test_the_python_api_refuses_a_negative_delay() -> None:
    scheduler = SchedulerService(cast(NearTermStore, object()), SystemClock())  # never used
    with pytest.raises(InvalidEventError) as caught:
        scheduler.build_event(topic="t", body="x", delay_seconds=-5)
    assert caught.value.field == "delay_seconds"


def test_the_ingress_parser_needs_no_kafka_client() -> None:
    code = "import sys, delayline.services.ingress_parse\nprint('confluent_kafka' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

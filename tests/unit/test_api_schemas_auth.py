"""Request models and the API-key check, without a server."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from pydantic import TypeAdapter, ValidationError

from delayline.api.auth import ApiKeyAuth, AuthenticationError
from delayline.api.schemas import BatchIn, EventIn, RescheduleIn, ScheduleRequest, to_utc
from delayline.metrics import Metrics

REQUEST: TypeAdapter[EventIn | BatchIn] = TypeAdapter(ScheduleRequest)


def test_one_event_or_a_batch() -> None:
    one = REQUEST.validate_python({"topic": "t", "delay_seconds": 1})
    assert isinstance(one, EventIn)
    batch = REQUEST.validate_python({"events": [{"topic": "t", "delay_seconds": 1}]})
    assert isinstance(batch, BatchIn)
    assert len(batch.events) == 1


def test_event_times_are_utc() -> None:
    event = EventIn.model_validate({"topic": "t", "scheduled_at": "2030-01-01T02:00:00+02:00"})
    assert event.scheduled_at == datetime(2030, 1, 1, tzinfo=UTC)
    naive = EventIn.model_validate({"topic": "t", "scheduled_at": "2030-01-01T00:00:00"})
    assert naive.scheduled_at is not None and naive.scheduled_at.tzinfo is UTC


@pytest.mark.parametrize(
    "doc",
    [
        {"topic": "t"},
        {"topic": "t", "delay_seconds": 1, "scheduled_at": "2030-01-01T00:00:00Z"},
        {"topic": "t", "delay_seconds": float("inf")},
        {"topic": "t", "delay_seconds": float("nan")},
        {"topic": "t", "delay_seconds": 1e12},
        {"topic": "t", "delay_seconds": 1, "unknown": True},
        {"topic": "t", "delay_seconds": 1, "body": 3.5},
        {"topic": "t", "delay_seconds": 1, "headers": {"k": 1}},
        {"topic": "", "delay_seconds": 1},
        {"topic": "t", "delay_seconds": 1, "max_delay_seconds": -1},
    ],
)
def test_bad_events_are_refused(doc: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        EventIn.model_validate(doc)


def test_reschedule_needs_exactly_one_time() -> None:
    assert RescheduleIn.model_validate({"delay_seconds": 0}).delay_seconds == 0
    for doc in ({}, {"delay_seconds": 1, "scheduled_at": "2030-01-01T00:00:00Z"}):
        with pytest.raises(ValidationError, match="exactly one"):
            RescheduleIn.model_validate(doc)


def test_to_utc_refuses_unrepresentable_times() -> None:
    with pytest.raises(ValueError, match="out of range"):
        to_utc(datetime.fromisoformat("0001-01-01T00:00:00+05:00"))
    with pytest.raises(ValueError, match="1970-2999"):
        to_utc(datetime(1969, 12, 31, tzinfo=UTC))


def test_key_check() -> None:
    auth = ApiKeyAuth(["alpha", "", "beta"], Metrics())
    assert auth.enabled
    assert auth.is_valid("alpha") and auth.is_valid("beta")
    assert not auth.is_valid("") and not auth.is_valid("alph") and not auth.is_valid("alphaa")
    assert not ApiKeyAuth([], Metrics()).enabled
    assert not ApiKeyAuth([""], Metrics()).enabled


async def test_dependency_counts_failures() -> None:
    metrics = Metrics()
    auth = ApiKeyAuth(["alpha"], metrics)
    await auth("alpha", None)
    with pytest.raises(AuthenticationError, match="invalid API key"):
        await auth("wrong", None)
    with pytest.raises(AuthenticationError, match="authentication required"):
        await auth(None, None)
    assert metrics.registry.get_sample_value("delayline_auth_failures_total") == 2
    await ApiKeyAuth([], metrics)(None, None)  # open API: nothing to check


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("priority", True),
        ("priority", "1"),
        ("max_delay_seconds", False),
        ("max_delay_seconds", "0"),
        ("delay_seconds", True),
        ("delay_seconds", "5"),
    ],
)
def test_numbers_are_strict(field: str, value: object) -> None:
    payload = {"topic": "t", "delay_seconds": 1, field: value}
    with pytest.raises(ValidationError) as caught:
        REQUEST.validate_json(orjson.dumps(payload))
    assert caught.value.errors()[0]["loc"][-1] == field
    with pytest.raises(ValidationError):
        REQUEST.validate_python(payload)


def test_the_key_check_reads_the_key_or_the_bearer_token() -> None:
    auth = ApiKeyAuth(["alpha"], Metrics())
    auth.check("alpha", None)
    auth.check(None, "alpha")
    with pytest.raises(AuthenticationError, match="invalid API key"):
        auth.check("beta", "gamma")
    with pytest.raises(AuthenticationError, match="authentication required"):
        auth.check(None, None)

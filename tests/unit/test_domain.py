"""The pure domain: validation, statuses, routing and the Redis codec."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from delayline.domain.codec import decode_event, encode_event
from delayline.domain.event_status import total_counts
from delayline.domain.events import (
    ALLOWED_TRANSITIONS,
    EventStatus,
    InvalidEventError,
    from_epoch_us,
    new_event,
    to_epoch_us,
)
from delayline.domain.routing import Tier, route

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def _event(**overrides: object) -> object:
    fields: dict[str, object] = {"topic": "user.notifications", "scheduled_at": NOW}
    fields.update(overrides)
    return new_event(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"topic": "bad topic"}, "topic", "not a valid Kafka topic"),
        ({"topic": ".."}, "topic", "not a valid Kafka topic"),
        ({"topic": "x" * 250}, "topic", "not a valid Kafka topic"),
        ({"topic": 5}, "topic", "must be a string"),
        ({"headers": {"k": 1}}, "headers", "must be a string"),
        ({"headers": {"x-schedule-id": "v"}}, "headers", "reserved"),
        ({"headers": {"k": "\ud800"}}, "headers", "not valid UTF-8"),
        ({"headers": ["k"]}, "headers", "must be a mapping"),
        ({"body": "\ud800"}, "body", "not valid UTF-8"),
        ({"body": "x" * (1024 * 1024 + 1)}, "body", "the limit is"),
        ({"body": 3.5}, "body", "must be str, bytes, dict or list"),
        ({"scheduled_at": "tomorrow"}, "scheduled_at", "not an ISO-8601"),
        ({"scheduled_at": 17}, "scheduled_at", "must be a datetime"),
        ({"scheduled_at": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))},
         "scheduled_at", "out of range"),
        ({"priority": 2**31}, "priority", "32-bit"),
        ({"priority": True}, "priority", "must be an integer"),
        ({"max_delay_seconds": -1}, "max_delay_seconds", "between"),
        ({"schedule_id": "has space"}, "schedule_id", "1-200 characters"),
        ({"entity_type": "\udfff"}, "entity_type", "not valid UTF-8"),
    ],
)  # fmt: skip
def test_invalid_fields_are_named(overrides: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(InvalidEventError) as info:
        _event(**overrides)
    assert info.value.field == field
    assert words in str(info.value)


def test_naive_datetime_is_utc_and_dict_body_is_json() -> None:
    event = new_event(topic="t", scheduled_at=datetime(2026, 1, 1, 8, 30), body={"a": 1})
    assert event.scheduled_at == datetime(2026, 1, 1, 8, 30, tzinfo=UTC)
    assert event.body == b'{"a":1}'
    assert event.max_delay_seconds == 86400
    assert event.message_key == event.schedule_id


def test_transitions_are_one_table() -> None:
    event = new_event(topic="t", scheduled_at=NOW)
    fired = event.with_status(EventStatus.PROCESSING, at=NOW).with_status(
        EventStatus.COMPLETED, at=NOW
    )
    assert fired.status.is_terminal
    with pytest.raises(ValueError, match="cannot move"):
        fired.with_status(EventStatus.PENDING, at=NOW)
    assert all(not ALLOWED_TRANSITIONS[s] for s in EventStatus if s.is_terminal)


def test_routing_at_the_horizon() -> None:
    horizon = 86400
    edge = NOW + timedelta(seconds=horizon)
    assert route(edge, NOW, horizon) is Tier.REDIS
    assert route(edge + timedelta(microseconds=1), NOW, horizon) is Tier.CLICKHOUSE
    assert route(NOW - timedelta(days=3), NOW, horizon) is Tier.REDIS


@given(st.integers(min_value=0, max_value=32503680000 * 10**6 - 1))
def test_epoch_microseconds_round_trip_exactly(us: int) -> None:
    assert to_epoch_us(from_epoch_us(us)) == us


@given(
    body=st.text(max_size=200),
    headers=st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=10), max_size=3),
    priority=st.integers(min_value=-(2**31), max_value=2**31 - 1),
)
def test_codec_round_trip(body: str, headers: dict[str, str], priority: int) -> None:
    try:
        event = new_event(
            topic="t", scheduled_at=NOW, body=body, headers=headers, priority=priority
        )
    except InvalidEventError:
        return  # surrogates or reserved names: rejected before storage
    back = decode_event(encode_event(event), event.schedule_id)
    assert back == event


def test_epoch_microseconds_are_exact_on_both_sides_of_the_float_path() -> None:
    """``from_epoch_us`` takes a float shortcut below 2**32 s; check it where doubles are
    coarsest, and that the exact path takes over above it."""
    edge = 2**32 * 10**6
    for us in (*range(edge - 3000, edge + 3000), 1_795_981_815_572_123, 0, 1, 999_999):
        got = from_epoch_us(us)
        assert to_epoch_us(got) == us
        assert got == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def test_counts_add_up_over_stores_and_zeros_stay() -> None:
    per_shard = [{"pending": 2, "processing": 0, "completed": 5}, {"pending": 0, "processing": 0}]
    assert total_counts(per_shard) == {"pending": 2, "processing": 0, "completed": 5}

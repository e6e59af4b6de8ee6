"""The input rules every ingress shares (pure): header names, topics, the producible size, and
the classification of disk-full and unknown-outcome errors."""

from __future__ import annotations

import errno
from datetime import UTC, datetime

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from delayline.domain.events import (
    EventRules,
    InvalidEventError,
    OversizeEventError,
    message_size,
    new_event,
    validate_headers,
)
from delayline.errors import (
    DependencyUnavailable,
    ErrorClass,
    OutcomeUnknown,
    StorageFull,
    classify,
    unavailable,
)

WHEN = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "name",
    [
        "x-schedule-id\u0000",
        "x-schedule-id ",
        "\tx-action",
        "X-SCHEDULED-AT",
        "x-schedule-id\r\n",
        "\uff58-schedule-id",
        "\u0445-schedule-id",
        "a b",
        "a:b",
        "caf\u00e9",
        "x" * 257,
    ],
)
def test_header_names_must_be_tokens_and_not_reserved_in_any_form(name: str) -> None:
    with pytest.raises(InvalidEventError) as caught:
        validate_headers({name: "v"})
    assert caught.value.field == "headers"


def test_token_header_names_pass() -> None:
    headers = {"content-type": "a", "traceparent": "b", "X_Custom.1~!#$%&'*+^`|": "c"}
    assert validate_headers(headers) == headers


def test_internal_and_own_topics_and_the_allow_list() -> None:
    rules = EventRules(own_topics=frozenset({"delayed", "delayed.dlq"}), allowed_topics=("user.*",))
    for topic in ("__consumer_offsets", "__x", "delayed", "delayed.dlq", "orders"):
        with pytest.raises(InvalidEventError, match="topic"):
            new_event(topic=topic, scheduled_at=WHEN, rules=rules)
    assert new_event(topic="user.created", scheduled_at=WHEN, rules=rules).topic == "user.created"
    assert new_event(topic="orders", scheduled_at=WHEN).topic == "orders"  # no allow-list


def test_the_size_rule_counts_key_body_and_every_fired_header() -> None:
    rules = EventRules(max_message_bytes=2000)

    def event(body: str, headers: dict[str, str] | None = None) -> object:
        return new_event(
            topic="t",
            scheduled_at=WHEN,
            schedule_id="s1",
            correlation_id="k",
            body=body,
            headers=headers,
            rules=rules,
        )

    base = message_size(
        new_event(topic="t", scheduled_at=WHEN, schedule_id="s1", correlation_id="k")
    )
    fits = new_event(
        topic="t",
        scheduled_at=WHEN,
        schedule_id="s1",
        correlation_id="k",
        body="b" * (2000 - base),
        rules=rules,
    )
    assert message_size(fits) == 2000
    with pytest.raises(OversizeEventError, match=r"message\.max\.bytes\) is 2000") as caught:
        event("b" * (2001 - base))
    assert caught.value.code == "oversize"
    with pytest.raises(OversizeEventError):  # headers count too
        event("b" * (2000 - base), {"h": "v"})


def test_disk_full_errors_are_their_own_kind() -> None:
    misconf = ResponseError("MISCONF Errors writing to the AOF file: No space left on device")
    for exc in (
        misconf,
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("Code: 243. DB::Exception: Cannot reserve 1.00 MiB. (NOT_ENOUGH_SPACE)"),
    ):
        assert classify(exc) is ErrorClass.UNAVAILABLE
        assert isinstance(unavailable("redis", exc), StorageFull)


def test_a_timeout_after_sending_is_outcome_unknown_and_a_refused_connection_is_not() -> None:
    sent = [
        RedisTimeoutError("Timeout reading from 127.0.0.1:6379"),
        RedisConnectionError("Connection closed by server."),
    ]
    for exc in sent:
        assert isinstance(unavailable("redis", exc), OutcomeUnknown)
    not_sent = [
        RedisTimeoutError("Timeout connecting to server"),
        RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
    ]
    for exc in not_sent:
        error = unavailable("redis", exc)
        assert type(error) is DependencyUnavailable

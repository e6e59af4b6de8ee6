"""Request models and the API-key check, without a server."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from pydantic import TypeAdapter, ValidationError

from delayline.api.auth import ApiKeyAuth, AuthenticationError, ForbiddenError
from delayline.api.keys import (
    ANONYMOUS_ADMIN,
    ApiKeyEntry,
    Principal,
    Scope,
    hash_key,
    new_key,
    parse_scopes,
)
from delayline.api.schemas import BatchIn, EventIn, RescheduleIn, ScheduleRequest, to_utc
from delayline.metrics import Metrics
from delayline.settings import SettingsError, load_settings

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


def _auth(metrics: Metrics | None = None) -> ApiKeyAuth:
    entries = [
        ApiKeyEntry.for_key("alpha", id="a", tenant="acme", scopes="read"),
        ApiKeyEntry.for_key("beta", id="b", scopes="admin"),
    ]
    return ApiKeyAuth(entries, metrics or Metrics())


def test_key_check() -> None:
    auth = _auth()
    assert auth.enabled
    found = auth.find("alpha")
    assert found is not None and found.id == "a" and found.tenant == "acme"
    assert auth.find("beta") is not None
    assert auth.find("") is None and auth.find("alph") is None and auth.find("alphaa") is None
    assert not ApiKeyAuth([], Metrics()).enabled


def test_failures_are_counted_by_reason() -> None:
    metrics = Metrics()
    auth = _auth(metrics)
    assert auth.authenticate("alpha", None) == Principal("a", "acme", frozenset({Scope.READ}))
    with pytest.raises(AuthenticationError, match="invalid API key"):
        auth.authenticate("wrong", None)
    with pytest.raises(AuthenticationError, match="authentication required"):
        auth.authenticate(None, None)
    assert isinstance(auth.forbid(Scope.ADMIN), ForbiddenError)
    for reason in ("missing", "invalid", "forbidden"):
        labels = {"reason": reason}
        assert metrics.registry.get_sample_value("delayline_auth_failures_total", labels) == 1
    # open API: the default tenant's admin, nothing counted
    assert ApiKeyAuth([], metrics).authenticate(None, None) == ANONYMOUS_ADMIN


def test_scopes() -> None:
    reader = Principal("r", "acme", frozenset({Scope.READ}))
    assert reader.can(Scope.READ) and not reader.can(Scope.SCHEDULE) and not reader.is_admin
    assert ANONYMOUS_ADMIN.can(Scope.READ) and ANONYMOUS_ADMIN.can(Scope.SCHEDULE)
    assert parse_scopes(" read, schedule ") == {Scope.READ, Scope.SCHEDULE}
    with pytest.raises(ValueError, match="unknown scope 'write'"):
        parse_scopes("read,write")
    with pytest.raises(ValueError, match="at least one scope"):
        parse_scopes(" , ")


def test_keys_are_random_and_stored_as_their_sha256() -> None:
    key = new_key()
    assert key.startswith("dl_") and len(key) == 46 and key != new_key()
    assert hash_key("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2 vector
    )
    entry = ApiKeyEntry.for_key(key, id="k", tenant="acme", scopes="read,schedule")
    assert entry.sha256 == hash_key(key) and key not in entry.model_dump_json()


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ("plain-key", "plain keys are not accepted"),
        ({"id": "k", "scopes": ["read"]}, "sha256"),
        ({"id": "k", "scopes": [], "sha256": "0" * 64}, "scopes"),
        ({"id": "k", "scopes": ["write"], "sha256": "0" * 64}, "scopes"),
        ({"id": "k", "scopes": ["read"], "sha256": "0" * 63}, "sha256"),
        ({"id": "k", "scopes": ["read"], "sha256": "A" * 64}, "sha256"),
        ({"id": "k", "tenant": "Acme", "scopes": ["read"], "sha256": "0" * 64}, "tenant"),
        ({"id": "k k", "scopes": ["read"], "sha256": "0" * 64}, "id"),
        ({"id": "k", "scopes": ["read"], "sha256": "0" * 64, "key": "x"}, "key"),
    ],
)
def test_bad_key_entries_are_refused_at_start(doc: object, problem: str) -> None:
    with pytest.raises(SettingsError, match="SCHEDULES_API_KEYS") as caught:
        load_settings(api_keys=[doc])
    assert problem in str(caught.value)


def test_key_ids_and_hashes_are_unique() -> None:
    one = {"id": "k", "scopes": "read", "sha256": "0" * 64}
    with pytest.raises(SettingsError, match="two keys have the id 'k'"):
        load_settings(api_keys=[one, {**one, "sha256": "1" * 64}])
    with pytest.raises(SettingsError, match="same hash"):
        load_settings(api_keys=[one, {**one, "id": "j"}])
    loaded = load_settings(api_keys=[one]).api_keys
    assert loaded[0].tenant == "default" and loaded[0].scopes == {Scope.READ}


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
    auth = _auth()
    assert auth.authenticate("alpha", None).key_id == "a"
    assert auth.authenticate(None, "beta").key_id == "b"
    with pytest.raises(AuthenticationError, match="invalid API key"):
        auth.authenticate("beta-", "gamma")
    with pytest.raises(AuthenticationError, match="authentication required"):
        auth.authenticate(None, None)

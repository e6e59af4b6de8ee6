"""Scheduling over HTTP: against the whole served application (both tiers, dispatcher, broker)
and, for pure HTTP validation, against a test double over a real Valkey store."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from delayline.adapters.embedded import free_port
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.domain.events import to_epoch_us, utc_now

from .conftest import Api, ApiFactory

URL = "/api/v1/schedules"


@pytest.fixture(params=["double", "service"])
def real(request: pytest.FixtureRequest) -> bool:
    """Run against the test double and against the whole served application."""
    return bool(request.param == "service")


@pytest.fixture
def api(make_api: ApiFactory, real: bool) -> Api:
    return make_api(real_service=real)


async def _stored(client: httpx.AsyncClient, schedule_id: str) -> dict[str, Any] | None:
    """The event as the served API reads it back (None: 404)."""
    resp = await client.get(f"{URL}/{schedule_id}")
    if resp.status_code == 404:
        return None
    assert resp.status_code == 200, resp.text
    doc: dict[str, Any] = resp.json()
    return doc


def _event(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "topic": "user.notifications",
        "entity_type": "user",
        "action": "send_reminder",
        "body": {"user_id": 123},
        "scheduled_at": (utc_now() + timedelta(minutes=30)).isoformat(),
        "correlation_id": "reminder-123",
        "headers": {"priority": "high"},
        "priority": 1,
    }
    doc.update(overrides)
    return doc


async def test_schedule_one_event_stores_it(aclient: httpx.AsyncClient) -> None:
    due = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    resp = await aclient.post(URL, json=_event(scheduled_at=due.isoformat(), schedule_id="one"))
    assert resp.status_code == 201, resp.text
    assert resp.json() == {
        "schedule_id": "one",
        "created": True,
        "scheduled_at": "2030-01-02T03:04:05.678901Z",
    }
    stored = await _stored(aclient, "one")
    assert stored is not None
    assert stored["status"] == "pending"
    assert stored["topic"] == "user.notifications"
    assert stored["body"] == '{"user_id":123}'
    assert stored["headers"] == {"priority": "high"}
    assert stored["priority"] == 1
    assert stored["scheduled_at"] == "2030-01-02T03:04:05.678901Z"


async def test_schedule_is_idempotent_by_schedule_id(aclient: httpx.AsyncClient) -> None:
    first = await aclient.post(URL, json=_event(schedule_id="same", body="first"))
    second = await aclient.post(URL, json=_event(schedule_id="same", body="second"))
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["created"] is True
    assert second.json()["created"] is False
    stored = await _stored(aclient, "same")
    assert stored is not None and stored["body"] == "first"


async def test_delay_seconds_sets_the_due_time(aclient: httpx.AsyncClient) -> None:
    before = utc_now()
    resp = await aclient.post(
        URL, json={"topic": "t", "delay_seconds": 90.5, "schedule_id": "later"}
    )
    after = utc_now()
    assert resp.status_code == 201, resp.text
    stored = await _stored(aclient, "later")
    assert stored is not None
    low = before + timedelta(seconds=90.5)
    high = after + timedelta(seconds=90.5)
    assert low <= datetime.fromisoformat(stored["scheduled_at"]) <= high


async def test_batch_schedules_every_event_in_order(
    aclient: httpx.AsyncClient, store: RedisNearTermStore
) -> None:
    await aclient.post(URL, json=_event(schedule_id="b1"))
    batch = {"events": [_event(schedule_id=f"b{i}", priority=i) for i in range(3)]}
    resp = await aclient.post(URL, json=batch)
    assert resp.status_code == 201, resp.text
    doc = resp.json()
    assert [r["schedule_id"] for r in doc["results"]] == ["b0", "b1", "b2"]
    assert [r["created"] for r in doc["results"]] == [True, False, True]
    assert doc["created"] == 2
    assert (await store.counts())["pending"] == 3


async def test_a_bad_batch_stores_nothing(aclient: httpx.AsyncClient) -> None:
    batch = {"events": [_event(schedule_id="ok"), _event(headers={"x-schedule-id": "forged"})]}
    resp = await aclient.post(URL, json=batch)
    assert resp.status_code == 422
    doc = resp.json()
    assert doc["field"] == "events.1.headers"
    assert "reserved" in doc["error"]
    assert await _stored(aclient, "ok") is None


@pytest.mark.parametrize(
    ("payload", "field", "words"),
    [
        (_event(topic=".."), "topic", "not a valid Kafka topic"),
        (_event(topic="bad topic!"), "topic", "pattern"),
        (_event(headers={"x-correlation-id": "x"}), "headers", "reserved"),
        (_event(priority=2**31), "priority", "less than or equal"),
        (_event(priority="high"), "priority", "integer"),
        (_event(scheduled_at="tomorrow"), "scheduled_at", "datetime"),
        (_event(scheduled_at="0001-01-01T00:00:00+01:00"), "scheduled_at", "out of range"),
        (_event(scheduled_at="3000-01-01T00:00:00Z"), "scheduled_at", "1970-2999"),
        (_event(delay_seconds=5), None, "not both"),
        ({"topic": "t"}, None, "scheduled_at or delay_seconds"),
        (_event(delay_seconds=None, scheduled_at=None), None, "scheduled_at or delay_seconds"),
        ({"topic": "t", "delay_seconds": -1}, "delay_seconds", "greater than or equal"),
        (_event(colour="blue"), "colour", "Extra inputs"),
        (_event(body=12), "body", "a string, a JSON object or a JSON array"),
        (_event(correlation_id="\ud800"), "correlation_id", "unicode"),
        (_event(body={"k": "\udfff"}), "body", "JSON"),
        (_event(schedule_id="has space"), "schedule_id", "pattern"),
        ({"events": []}, "events", "at least 1"),
        ({"events": [{"topic": "t", "delay_seconds": 1}], "extra": 1}, "extra", "Extra inputs"),
        ([1, 2], None, "dictionary"),
        ("just a string", None, "dictionary"),
    ],
)
def test_bad_events_get_422_naming_the_field(
    api: Api, payload: object, field: str | None, words: str
) -> None:
    # json.dumps escapes non-ASCII, so a lone surrogate travels as the JSON escape "\\ud800".
    raw = json.dumps(payload).encode()
    resp = api.client.post(URL, content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 422, resp.text
    doc = resp.json()
    assert doc["field"] == field, doc
    assert words in doc["error"], doc


def test_event_body_over_the_limit_is_422(make_api: ApiFactory, real: bool) -> None:
    api = make_api(max_body_bytes=100, real_service=real)
    resp = api.client.post(URL, json=_event(body="x" * 101))
    assert resp.status_code == 422
    assert resp.json()["field"] == "body"
    assert "limit is 100" in resp.json()["error"]


def test_invalid_json_is_422(api: Api) -> None:
    resp = api.client.post(
        URL, content=b'{"topic": "t",', headers={"content-type": "application/json"}
    )
    assert resp.status_code == 422
    assert resp.json()["error"].startswith("invalid JSON")


def test_non_json_body_is_4xx_with_a_message(api: Api) -> None:
    resp = api.client.post(URL, content=b"topic=t", headers={"content-type": "text/plain"})
    assert 400 <= resp.status_code < 500
    assert resp.json()["error"]


def test_request_over_the_size_limit_is_413(make_api: ApiFactory) -> None:
    api = make_api(max_request_bytes=2000)
    resp = api.client.post(URL, json=_event(body="y" * 5000))
    assert resp.status_code == 413
    assert "larger than 2000 bytes" in resp.json()["error"]

    def chunks() -> Any:
        for _ in range(10):
            yield b"z" * 500

    streamed = api.client.post(URL, content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413


def test_get_returns_the_event_or_404(api: Api) -> None:
    api.client.post(URL, json=_event(schedule_id="org/team:42"))
    resp = api.client.get(f"{URL}/org/team:42")
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["schedule_id"] == "org/team:42"
    assert doc["status"] == "pending"
    assert doc["body"] == '{"user_id":123}'
    assert doc["headers"] == {"priority": "high"}

    missing = api.client.get(f"{URL}/nope")
    assert missing.status_code == 404
    assert missing.json() == {"error": "no scheduled event with id 'nope'", "field": "schedule_id"}
    assert api.client.get(f"{URL}/bad%20id").status_code == 404


async def test_cancel_then_cancel_again(aclient: httpx.AsyncClient) -> None:
    await aclient.post(URL, json=_event(schedule_id="c1"))
    resp = await aclient.delete(f"{URL}/c1")
    assert resp.status_code == 200
    assert resp.json() == {"schedule_id": "c1", "cancelled": True}
    stored = await _stored(aclient, "c1")
    assert stored is not None and stored["status"] == "cancelled"

    again = await aclient.delete(f"{URL}/c1")
    assert again.status_code == 409
    assert "is cancelled" in again.json()["error"]
    assert (await aclient.delete(f"{URL}/unknown")).status_code == 404


async def test_cancel_of_a_firing_event_is_409(
    make_api: ApiFactory, store: RedisNearTermStore
) -> None:
    """HTTP mapping only (the double): a real dispatcher would race the test for the claim."""
    api = make_api()
    aclient = httpx.AsyncClient(base_url=api.url, timeout=10)
    await aclient.post(URL, json={"topic": "t", "delay_seconds": 0, "schedule_id": "busy"})
    claim = await store.claim(to_epoch_us(utc_now()) + 1_000_000, 10, 30)
    assert [e.schedule_id for e in claim.events] == ["busy"]
    resp = await aclient.delete(f"{URL}/busy")
    await aclient.aclose()
    assert resp.status_code == 409
    assert "processing" in resp.json()["error"]


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_reschedule(aclient: httpx.AsyncClient, method: str) -> None:
    await aclient.post(URL, json=_event(schedule_id="r1"))
    new_due = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    resp = await aclient.request(
        method, f"{URL}/r1", json={"scheduled_at": "2031-05-06T09:08:09+02:00"}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"schedule_id": "r1", "scheduled_at": "2031-05-06T07:08:09Z"}
    stored = await _stored(aclient, "r1")
    assert stored is not None
    assert datetime.fromisoformat(stored["scheduled_at"]) == new_due

    assert (await aclient.request(method, f"{URL}/r1", json={})).status_code == 422
    both = {"scheduled_at": new_due.isoformat(), "delay_seconds": 1}
    assert (await aclient.request(method, f"{URL}/r1", json=both)).status_code == 422
    unknown = await aclient.request(method, f"{URL}/ghost", json={"delay_seconds": 5})
    assert unknown.status_code == 404
    await aclient.delete(f"{URL}/r1")
    gone = await aclient.request(method, f"{URL}/r1", json={"delay_seconds": 5})
    assert gone.status_code == 409
    assert "only pending events can be rescheduled" in gone.json()["error"]


def test_unavailable_store_is_503_with_retry_after(make_api: ApiFactory, real: bool) -> None:
    api = make_api(redis_url=f"redis://127.0.0.1:{free_port()}/0", real_service=real)
    for method, path, body in [
        ("POST", URL, _event()),
        ("GET", f"{URL}/x", None),
        ("DELETE", f"{URL}/x", None),
        ("PUT", f"{URL}/x", {"delay_seconds": 1}),
        ("GET", f"{URL}/monitoring/stats", None),
    ]:
        resp = api.client.request(method, path, json=body)
        assert resp.status_code == 503, (method, path, resp.text)
        assert resp.headers["retry-after"] == "5"
        assert "unavailable" in resp.json()["error"]


def test_unknown_routes_and_methods_are_json_4xx(api: Api) -> None:
    resp = api.client.get("/api/v2/nothing")
    assert resp.status_code == 404
    assert resp.json()["error"] == "Not Found"
    wrong = api.client.put(URL)
    assert wrong.status_code == 405
    assert wrong.json()["error"] == "Method Not Allowed"


def test_openapi_documents_every_path(api: Api) -> None:
    resp = api.client.get("/openapi.json")
    assert resp.status_code == 200
    paths = resp.json()["paths"]
    monitoring = "/api/v1/schedules/monitoring"
    assert set(paths) == {
        URL,
        f"{URL}/{{schedule_id}}",
        f"{URL}/{{schedule_id}}/history",
        *(
            f"{monitoring}/{p}"
            for p in (
                "health",
                "stats",
                "sync",
                "cleanup",
                "analytics/summary",
                "analytics/performance",
                "metrics",
                "rotate-keys",
            )
        ),
        "/api/v1/audit",
    }
    assert set(paths[f"{URL}/{{schedule_id}}"]) == {"get", "delete", "put", "patch"}
    assert set(paths[URL]) == {"get", "post", "delete", "patch"}
    assert api.client.get("/docs").status_code == 200

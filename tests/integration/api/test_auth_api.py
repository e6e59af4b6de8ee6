"""API-key authentication on a real server: required when configured, open health and metrics,
401 without a valid key and 403 for a key lacking the route's scope."""

from __future__ import annotations

import logging

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from delayline.api.keys import ApiKeyEntry

from .conftest import Api, ApiFactory

KEYS = ("first-key-0123456789", "second-key-abcdefghij")
ENTRIES = [ApiKeyEntry.for_key(key, id=f"key-{n}") for n, key in enumerate(KEYS)]
MON = "/api/v1/schedules/monitoring"
PROTECTED = [
    ("POST", "/api/v1/schedules"),
    ("GET", "/api/v1/schedules/some-id"),
    ("DELETE", "/api/v1/schedules/some-id"),
    ("PUT", "/api/v1/schedules/some-id"),
    ("PATCH", "/api/v1/schedules/some-id"),
    ("GET", f"{MON}/stats"),
    ("POST", f"{MON}/sync"),
    ("POST", f"{MON}/cleanup"),
    ("GET", f"{MON}/analytics/summary"),
    ("GET", f"{MON}/analytics/performance"),
]


def _auth_failures(api: Api, reason: str | None = None) -> float:
    for family in text_string_to_metric_families(api.metrics.render().decode()):
        if family.name == "delayline_auth_failures":
            return sum(
                s.value
                for s in family.samples
                if s.name.endswith("_total") and reason in (None, s.labels["reason"])
            )
    return 0.0  # no refusal counted yet: the labelled counter has no sample


@pytest.fixture
def secured(make_api: ApiFactory) -> Api:
    return make_api(api_keys=ENTRIES)


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_protected_endpoint_needs_a_key(secured: Api, method: str, path: str) -> None:
    resp = secured.client.request(method, path)
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == 'Bearer realm="delayline"'
    assert "authentication required" in resp.json()["error"]


def test_wrong_keys_are_refused_and_counted(secured: Api) -> None:
    assert _auth_failures(secured) == 0
    bad = [
        {"X-API-Key": "nope"},
        {"Authorization": "Bearer nope"},
        {"Authorization": f"Basic {KEYS[0]}"},  # not a bearer token: no key presented
        {"X-API-Key": KEYS[0][:-1]},
        {"X-API-Key": KEYS[0] + "x"},
        {},
    ]
    for headers in bad:
        resp = secured.client.get(f"{MON}/stats", headers=headers)
        assert resp.status_code == 401, headers
    assert _auth_failures(secured) == len(bad)
    assert _auth_failures(secured, "missing") == 2  # the Basic header and no header
    assert _auth_failures(secured, "invalid") == len(bad) - 2


@pytest.mark.parametrize(
    "headers",
    [
        {"X-API-Key": KEYS[0]},
        {"X-API-Key": KEYS[1]},
        {"Authorization": f"Bearer {KEYS[0]}"},
        {"Authorization": f"bearer {KEYS[1]}"},
    ],
)
def test_any_configured_key_is_accepted(secured: Api, headers: dict[str, str]) -> None:
    resp = secured.client.get(f"{MON}/stats", headers=headers)
    assert resp.status_code == 200, resp.text
    created = secured.client.post(
        "/api/v1/schedules", json={"topic": "t", "delay_seconds": 30}, headers=headers
    )
    assert created.status_code == 201
    assert _auth_failures(secured) == 0


def test_health_and_metrics_are_open_by_default(secured: Api) -> None:
    assert secured.client.get(f"{MON}/health").status_code == 200
    assert secured.client.get(f"{MON}/metrics").status_code == 200


def test_health_and_metrics_can_be_protected(make_api: ApiFactory) -> None:
    api = make_api(api_keys=ENTRIES, open_health=False, open_metrics=False)
    for path in ("health", "metrics"):
        assert api.client.get(f"{MON}/{path}").status_code == 401
        ok = api.client.get(f"{MON}/{path}", headers={"X-API-Key": KEYS[1]})
        assert ok.status_code == 200


def test_without_keys_everything_is_open(api: Api) -> None:
    assert api.client.get(f"{MON}/stats").status_code == 200
    assert api.client.get(f"{MON}/stats", headers={"X-API-Key": "anything"}).status_code == 200
    assert "securitySchemes" not in api.client.get("/openapi.json").json().get("components", {})


def test_openapi_documents_both_schemes(secured: Api) -> None:
    schemes = secured.client.get("/openapi.json").json()["components"]["securitySchemes"]
    assert schemes["APIKeyHeader"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "An API key",
    }
    assert schemes["HTTPBearer"]["scheme"] == "bearer"


def test_keys_never_appear_in_logs(secured: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secured.client.get(f"{MON}/stats", headers={"X-API-Key": KEYS[0]})
    secured.client.get(f"{MON}/stats", headers={"X-API-Key": "guess-" + KEYS[1]})
    secured.client.get(f"{MON}/stats", headers={"Authorization": f"Bearer {KEYS[1]}"})
    with httpx.Client(base_url=secured.url) as other:
        other.get(f"{MON}/health", headers={"X-API-Key": KEYS[0]})
    assert caplog.records  # the server did log at debug level
    assert all(k not in caplog.text for k in KEYS)


SCOPED = {
    "reader": ("reader-key-0123456789", "read"),
    "scheduler": ("scheduler-key-0123456", "schedule"),
    "admin": ("admin-key-01234567890", "admin"),
}
# Each route and the scope it needs; a key without it gets 403 (with it: anything but 401/403).
ROUTE_SCOPES = [
    ("GET", "/api/v1/schedules/some-id", "read"),
    ("GET", "/api/v1/schedules/some-id/history", "read"),
    ("GET", "/api/v1/schedules", "read"),
    ("POST", "/api/v1/schedules", "schedule"),
    ("DELETE", "/api/v1/schedules/some-id", "schedule"),
    ("PATCH", "/api/v1/schedules/some-id", "schedule"),
    ("PUT", "/api/v1/schedules/some-id", "schedule"),
    ("DELETE", "/api/v1/schedules?correlation_id=k", "schedule"),
    ("GET", f"{MON}/stats", "admin"),
    ("POST", f"{MON}/sync", "admin"),
    ("POST", f"{MON}/cleanup", "admin"),
    ("GET", f"{MON}/analytics/summary", "read"),
    ("GET", f"{MON}/analytics/performance", "read"),
    ("GET", "/api/v1/audit", "admin"),
]


@pytest.fixture
def scoped(make_api: ApiFactory) -> Api:
    entries = [
        ApiKeyEntry.for_key(key, id=name, scopes=scopes) for name, (key, scopes) in SCOPED.items()
    ]
    return make_api(api_keys=entries, open_health=False, open_metrics=False)


@pytest.mark.parametrize(("method", "path", "scope"), ROUTE_SCOPES)
def test_a_key_lacking_the_routes_scope_is_forbidden(
    scoped: Api, method: str, path: str, scope: str
) -> None:
    body = {"topic": "t", "delay_seconds": 30}
    forbidden = 0
    for name, (key, key_scope) in SCOPED.items():
        resp = scoped.client.request(method, path, json=body, headers={"X-API-Key": key})
        if key_scope in (scope, "admin"):
            assert resp.status_code not in (401, 403), (name, resp.text)
        else:
            forbidden += 1
            assert resp.status_code == 403, (name, resp.text)
            assert resp.json()["error"] == f"this API key lacks the {scope!r} scope"
    assert _auth_failures(scoped, "forbidden") == forbidden
    assert _auth_failures(scoped) == forbidden
    assert scoped.client.request(method, path, json=body).status_code == 401


def test_protected_health_and_metrics_need_only_read(scoped: Api) -> None:
    for path in ("health", "metrics"):
        resp = scoped.client.get(f"{MON}/{path}", headers={"X-API-Key": SCOPED["reader"][0]})
        assert resp.status_code == 200
        resp = scoped.client.get(f"{MON}/{path}", headers={"X-API-Key": SCOPED["scheduler"][0]})
        assert resp.status_code == 403

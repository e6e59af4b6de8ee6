"""The audit trail through the served application (Valkey, chDB, Tansu): sync, cleanup, key
rotation (its start, each step, its end) and bulk changes by key are recorded with who did
them, and read back over ``GET /api/v1/audit`` (admin only), filtered and paged."""

from __future__ import annotations

import base64
import os
import time
from typing import Any

import orjson
import pytest

from delayline.api.keys import ApiKeyEntry

from .conftest import Api, ApiFactory

AUDIT = "/api/v1/audit"
MON = "/api/v1/schedules/monitoring"
OPS = ("ops-key-0123456789abcdefgh", "ops")
ACME = ("acme-key-0123456789abcdefg", "acme-app")


def _ring() -> str:
    key = base64.b64encode(os.urandom(32)).decode()
    return orjson.dumps({"current": "k1", "keys": {"k1": key}}).decode()


@pytest.fixture
def audited(make_api: ApiFactory) -> Api:
    entries = [
        ApiKeyEntry.for_key(OPS[0], id=OPS[1], scopes="admin"),
        ApiKeyEntry.for_key(ACME[0], id=ACME[1], tenant="acme", scopes="read,schedule"),
    ]
    return make_api(
        real_service=True, api_keys=entries, extra_settings={"encryption_keys": _ring()}
    )


def _entries(api: Api, count: int, **params: Any) -> list[dict[str, Any]]:
    """Page through the audit (2 a page) until ``count`` entries match (or 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        entries: list[dict[str, Any]] = []
        cursor = ""
        while True:
            query = {"limit": 2, "cursor": cursor, **params}
            resp = api.client.get(AUDIT, params=query, headers={"X-API-Key": OPS[0]})
            assert resp.status_code == 200, resp.text
            page = resp.json()
            entries += page["entries"]
            if page["next_cursor"] is None:
                break
            cursor = page["next_cursor"]
        if len(entries) >= count or time.monotonic() > deadline:
            return entries
        time.sleep(0.1)


def test_admin_actions_are_recorded_and_readable(audited: Api) -> None:
    ops = {"X-API-Key": OPS[0]}
    acme = {"X-API-Key": ACME[0]}
    assert audited.client.post(f"{MON}/sync", headers=ops).status_code == 200
    assert audited.client.post(f"{MON}/cleanup", headers=ops).status_code == 200
    for key in ("order-7", "order-8"):
        event = {"topic": "t", "correlation_id": key, "delay_seconds": 3600}
        created = audited.client.post("/api/v1/schedules", json=event, headers=acme)
        assert created.status_code == 201
    deadline = time.monotonic() + 30  # the search sees an event within a flush interval
    while not audited.client.get(
        "/api/v1/schedules", params={"correlation_id": "order-7"}, headers=acme
    ).json()["events"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    order_7 = {"correlation_id": "order-7"}
    gone = audited.client.delete("/api/v1/schedules", params=order_7, headers=acme)
    assert gone.status_code == 200 and gone.json()["total"] == 1
    rotation = audited.client.post(f"{MON}/rotate-keys", headers=ops)
    assert rotation.status_code == 202, rotation.text

    finished = _entries(audited, 1, action="rotate-keys.finish")
    assert [e["outcome"] for e in finished] == ["ok"]
    assert finished[0]["parameters"]["key_id"] == "k1"
    steps = _entries(audited, 2, action="rotate-keys.step")
    assert {s["parameters"]["tier"] for s in steps} == {"redis", "clickhouse"}
    assert sum(s["parameters"]["scanned"] for s in steps) >= 1  # order-8 (already on k1)

    mine = _entries(audited, 3, key_id="ops")
    assert [e["action"] for e in mine] == ["sync", "cleanup", "rotate-keys"]
    assert all(e["tenant"] == "default" and e["outcome"] == "ok" for e in mine)
    assert mine[0]["parameters"] == {"result": 0}
    by_key = _entries(audited, 1, action="cancel-by-key")
    assert by_key[0]["key_id"] == "acme-app" and by_key[0]["tenant"] == "acme"
    assert by_key[0]["parameters"] == {
        "correlation_id": "order-7",
        "result": {"redis": 1, "clickhouse": 0},
    }
    everything = _entries(audited, 7)
    assert [e["at"] for e in everything] == sorted(e["at"] for e in everything)

    # the trail is the admin's: a tenant's key is refused
    assert audited.client.get(AUDIT, headers=acme).status_code == 403
    assert audited.client.get(AUDIT).status_code == 401
    day_one, day_two = "2001-01-01T00:00:00Z", "2001-01-02T00:00:00Z"
    empty = audited.client.get(AUDIT, params={"since": day_one, "until": day_two}, headers=ops)
    assert empty.json() == {"entries": [], "next_cursor": None}
    bad = audited.client.get(AUDIT, params={"since": day_two, "until": day_one}, headers=ops)
    assert bad.status_code == 422 and bad.json()["field"] == "since"

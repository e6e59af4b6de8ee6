"""Tenants through the served application (Valkey, chDB, Tansu): each sees, lists, cancels and
reschedules only its own events; ids and correlation ids cannot be taken across tenants;
another tenant's event is 404; an admin sees every tenant."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest

from delayline.adapters.embedded import EmbeddedTansu
from delayline.api.keys import ApiKeyEntry
from delayline.domain.events import utc_now
from delayline.events_client import EventBus
from tests.support import TopicReader

from .conftest import Api, ApiFactory, AppServer

URL = "/api/v1/schedules"
KEYS = {
    "acme": ("acme-key-0123456789abcdef", "acme", "read,schedule"),
    "globex": ("globex-key-0123456789abcd", "globex", "read,schedule"),
    "local": ("local-key-0123456789abcdef", "default", "read,schedule"),
    "admin": ("admin-key-0123456789abcdef", "default", "admin"),
}


def _as(name: str) -> dict[str, str]:
    return {"X-API-Key": KEYS[name][0]}


@pytest.fixture
def tenants(make_api: ApiFactory) -> Api:
    entries = [
        ApiKeyEntry.for_key(key, id=name, tenant=tenant, scopes=scopes)
        for name, (key, tenant, scopes) in KEYS.items()
    ]
    return make_api(real_service=True, api_keys=entries)


async def _listed(
    client: httpx.AsyncClient, who: str, count: int, **params: Any
) -> list[dict[str, Any]]:
    """Page through the search (2 a page) until at least ``count`` events are listed (the
    search reads the lifecycle history, written within a flush interval)."""
    deadline = time.monotonic() + 30
    while True:
        events: list[dict[str, Any]] = []
        cursor = ""
        while True:
            query = {"limit": 2, "cursor": cursor, **params}
            resp = await client.get(URL, params=query, headers=_as(who))
            assert resp.status_code == 200, resp.text
            page = resp.json()
            events += page["events"]
            if page["next_cursor"] is None:
                break
            cursor = page["next_cursor"]
        if len(events) >= count or time.monotonic() > deadline:
            return events
        await asyncio.sleep(0.1)


def _event(schedule_id: str, body: str, key: str, days: float = 2) -> dict[str, Any]:
    due = (utc_now() + timedelta(days=days)).isoformat()
    return {
        "topic": "t",
        "schedule_id": schedule_id,
        "body": body,
        "correlation_id": key,
        "scheduled_at": due,
    }


async def test_a_schedule_id_cannot_be_squatted(tenants: Api, unique: str) -> None:
    sid = f"order-{unique}"
    async with httpx.AsyncClient(base_url=tenants.url, timeout=10) as client:
        for who in ("globex", "acme", "local"):  # the squatter first
            resp = await client.post(URL, json=_event(sid, f"{who}'s", "k"), headers=_as(who))
            assert resp.status_code == 201, resp.text
            assert resp.json()["schedule_id"] == sid
            assert resp.json()["created"] is True
        for who in ("globex", "acme", "local"):
            doc = (await client.get(f"{URL}/{sid}", headers=_as(who))).json()
            assert doc["schedule_id"] == sid and doc["body"] == f"{who}'s"
            assert doc["correlation_id"] == "k"
        # an admin sees all three, the others' under their qualified ids
        for stored, body in ((sid, "local's"), (f"@acme/{sid}", "acme's")):
            doc = (await client.get(f"{URL}/{stored}", headers=_as("admin"))).json()
            assert doc["body"] == body and doc["schedule_id"] == stored


async def test_another_tenants_event_is_not_found(tenants: Api, unique: str) -> None:
    sid = f"mine-{unique}"
    later = {"delay_seconds": 7200}
    async with httpx.AsyncClient(base_url=tenants.url, timeout=10) as client:
        resp = await client.post(URL, json=_event(sid, "acme", "k"), headers=_as("acme"))
        assert resp.status_code == 201, resp.text
        for who in ("globex", "local"):
            h = _as(who)
            assert (await client.get(f"{URL}/{sid}", headers=h)).status_code == 404
            assert (await client.get(f"{URL}/{sid}/history", headers=h)).status_code == 404
            assert (await client.delete(f"{URL}/{sid}", headers=h)).status_code == 404
            assert (await client.patch(f"{URL}/{sid}", json=later, headers=h)).status_code == 404
            # the stored name does not reach it either
            stored = f"{URL}/@acme/{sid}"
            assert (await client.get(stored, headers=h)).status_code in (404, 422)
            assert (await client.delete(stored, headers=h)).status_code in (404, 422)
        doc = (await client.get(f"{URL}/{sid}", headers=_as("acme"))).json()
        assert doc["status"] == "pending"
        assert (await client.delete(f"{URL}/{sid}", headers=_as("acme"))).status_code == 200


async def test_the_default_tenant_cannot_name_other_tenants_ids(tenants: Api, unique: str) -> None:
    async with httpx.AsyncClient(base_url=tenants.url, timeout=10) as client:
        taken = _event(f"@acme/x-{unique}", "b", "k")
        resp = await client.post(URL, json=taken, headers=_as("local"))
        assert resp.status_code == 422 and resp.json()["field"] == "schedule_id"
        keyed = _event(f"y-{unique}", "b", "@acme/k")
        resp = await client.post(URL, json=keyed, headers=_as("local"))
        assert resp.status_code == 422 and resp.json()["field"] == "correlation_id"
        long_id = "x" * 200  # fits for the default tenant, not once qualified
        resp = await client.post(URL, json=_event(long_id, "b", "k"), headers=_as("acme"))
        assert resp.status_code == 422 and "at most 194" in resp.json()["error"]


async def test_search_and_bulk_changes_stay_within_the_tenant(tenants: Api, unique: str) -> None:
    key = f"order-{unique}"
    async with httpx.AsyncClient(base_url=tenants.url, timeout=10) as client:
        for who in ("acme", "globex", "local"):
            for i, days in enumerate((0.5, 3)):  # one in each tier
                doc = _event(f"{who}-{i}-{unique}", who, key, days)
                resp = await client.post(URL, json=doc, headers=_as(who))
                assert resp.status_code == 201, resp.text
        for who in ("acme", "globex", "local"):
            listed = await _listed(client, who, 2, correlation_id=key)
            assert sorted(e["schedule_id"] for e in listed) == [
                f"{who}-0-{unique}",
                f"{who}-1-{unique}",
            ]
            assert {e["body"] for e in listed} == {who}
            assert {e["correlation_id"] for e in listed} == {key}
        everyone = await _listed(client, "admin", 6, correlation_id=f"@acme/{key}")
        assert {e["body"] for e in everyone} == {"acme"}
        # a search without the key: still only the tenant's own (here, within this test's ids)
        acme_all = await _listed(client, "acme", 2, topic="t")
        assert acme_all and all(e["body"] == "acme" for e in acme_all)

        moved = await client.patch(
            URL, params={"correlation_id": key}, json={"delay_seconds": 600}, headers=_as("globex")
        )
        assert moved.status_code == 200 and moved.json()["total"] == 2, moved.text
        cancelled = await client.delete(URL, params={"correlation_id": key}, headers=_as("acme"))
        assert cancelled.status_code == 200 and cancelled.json()["total"] == 2, cancelled.text
        for who, status in (("acme", "cancelled"), ("globex", "pending"), ("local", "pending")):
            for i in range(2):
                doc = (await client.get(f"{URL}/{who}-{i}-{unique}", headers=_as(who))).json()
                assert doc["status"] == status, (who, doc)
        assert (
            await client.delete(URL, params={"correlation_id": key}, headers=_as("local"))
        ).json()["total"] == 2


async def test_a_fired_message_carries_the_qualified_ids(
    tenants: Api, broker: EmbeddedTansu, unique: str
) -> None:
    topic = f"tenant-fired-{unique}"
    reader = TopicReader(broker.bootstrap_servers, topic)
    try:
        doc = {"topic": topic, "schedule_id": "f1", "correlation_id": "k1", "delay_seconds": 0}
        async with httpx.AsyncClient(base_url=tenants.url, timeout=10) as client:
            resp = await client.post(URL, json=doc, headers=_as("acme"))
            assert resp.status_code == 201, resp.text
        (fired,) = await asyncio.to_thread(reader.read, 1)
        assert fired.header("x-schedule-id") == "@acme/f1"
        assert fired.header("x-correlation-id") == "@acme/k1"
        assert fired.key == b"@acme/k1"
    finally:
        reader.close()


async def test_kafka_ingress_events_belong_to_the_tenant_their_ids_name(
    tenants: Api, broker: EmbeddedTansu, unique: str
) -> None:
    server = tenants.server
    assert isinstance(server, AppServer)
    bus = EventBus(broker.bootstrap_servers, server.app.settings.kafka_delayed_topic_name)
    due = utc_now() + timedelta(days=2)
    try:
        for sid, key in ((f"@acme/in-{unique}", "@acme/k"), (f"in-{unique}", "k")):
            await bus.publish_with_delay(
                topic="t", schedule_id=sid, correlation_id=key, body="b", scheduled_at=due
            )
    finally:
        await bus.close()
    sid = f"in-{unique}"
    async with httpx.AsyncClient(base_url=tenants.url, timeout=10) as client:
        acme = await _found(client, "acme", sid)
        assert acme["schedule_id"] == sid and acme["correlation_id"] == "k"
        local = await _found(client, "local", sid)  # the default tenant's own of that name
        assert local["schedule_id"] == sid and local["correlation_id"] == "k"
        both = await _listed(client, "admin", 1, correlation_id="@acme/k")
        assert [e["schedule_id"] for e in both] == [f"@acme/{sid}"]


async def _found(client: httpx.AsyncClient, who: str, sid: str) -> dict[str, Any]:
    """GET the event until the ingress has stored it (or 30 s)."""
    deadline = time.monotonic() + 30
    while (resp := await client.get(f"{URL}/{sid}", headers=_as(who))).status_code == 404:
        assert time.monotonic() < deadline, "the ingress did not store the event"
        await asyncio.sleep(0.1)
    assert resp.status_code == 200, resp.text
    doc: dict[str, Any] = resp.json()
    return doc

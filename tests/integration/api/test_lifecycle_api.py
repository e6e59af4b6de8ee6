"""Every event's whole life through the served application: the record before and after firing,
its history, and finding and acting on events by business key, in both tiers.

Real everything: HTTP against the served ``Application``, Valkey, chDB, and the Tansu broker for
the Kafka ingress and the fired messages.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from delayline.adapters.embedded import EmbeddedTansu
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.domain.events import utc_now
from delayline.events_client import EventBus
from delayline.services import scheduler
from tests.support import Fired, TopicReader

from .conftest import Api, ApiFactory, AppServer

URL = "/api/v1/schedules"
HORIZON = 8
"""Immediate horizon of these tests' application: due later than this goes to ClickHouse."""
NOT_1970 = datetime(2000, 1, 1).astimezone()


def _fields(unique: str, schedule_id: str, topic: str, due: datetime) -> dict[str, Any]:
    return {
        "schedule_id": schedule_id,
        "topic": topic,
        "entity_type": "user",
        "action": "remind",
        "body": '{"n":1}',
        "correlation_id": f"corr-{unique}",
        "headers": {"origin": "billing"},
        "priority": 3,
        "max_delay_seconds": 600,
        "scheduled_at": due,
    }


async def _schedule(ingress: str, api: Api, broker: EmbeddedTansu, fields: dict[str, Any]) -> None:
    server = api.server
    assert isinstance(server, AppServer)
    if ingress == "http":
        doc = {**fields, "scheduled_at": fields["scheduled_at"].isoformat()}
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
            resp = await client.post(URL, json=doc)
        assert resp.status_code == 201, resp.text
    elif ingress == "python":
        await server.acall(server.app.service.schedule_event(**fields))
    else:
        bus = EventBus(broker.bootstrap_servers, server.app.settings.kafka_delayed_topic_name)
        try:
            await bus.publish_with_delay(**fields)
        finally:
            await bus.close()


async def _get(client: httpx.AsyncClient, path: str, **params: Any) -> httpx.Response:
    return await client.get(f"{URL}/{path}" if path else URL, params=params)


async def _until(client: httpx.AsyncClient, path: str, done: Any, timeout: float = 30) -> Any:
    """GET ``path`` until ``done(doc)`` holds; returns that doc."""
    deadline = time.monotonic() + timeout
    doc: Any = None
    while time.monotonic() < deadline:
        resp = await _get(client, path)
        if resp.status_code == 200:
            doc = resp.json()
            if done(doc):
                return doc
        await asyncio.sleep(0.1)
    raise AssertionError(f"GET {path} never got there; last: {doc}")


def _assert_fields(doc: dict[str, Any], fields: dict[str, Any]) -> None:
    for name, value in fields.items():
        if name == "scheduled_at":
            assert datetime.fromisoformat(doc[name]) == value, (name, doc)
        else:
            assert doc[name] == value, (name, doc)
    assert doc["attempts"] == 0
    assert doc["last_error"] is None
    for name in ("created_at", "updated_at"):
        assert datetime.fromisoformat(doc[name]) > NOT_1970, (name, doc)


@pytest.mark.parametrize("tier", ["redis", "clickhouse"])
@pytest.mark.parametrize("ingress", ["python", "http", "kafka"])
async def test_the_whole_record_before_and_after_firing(
    make_api: ApiFactory,
    broker: EmbeddedTansu,
    store: RedisNearTermStore,
    unique: str,
    ingress: str,
    tier: str,
) -> None:
    api = make_api(real_service=True, immediate_horizon_seconds=HORIZON)
    server = api.server
    assert isinstance(server, AppServer)
    topic = f"life-{unique}"
    reader = TopicReader(broker.bootstrap_servers, topic)
    delay = HORIZON - 3 if tier == "redis" else HORIZON + 6
    due = (utc_now() + timedelta(seconds=delay)).replace(microsecond=123456)  # within 1 s
    schedule_id = f"{ingress}-{tier}-{unique}"
    fields = _fields(unique, schedule_id, topic, due)
    try:
        await _schedule(ingress, api, broker, fields)
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
            before = await _until(client, schedule_id, lambda d: True)
            _assert_fields(before, fields)
            assert before["status"] == "pending"
            assert before["fired_at"] is None and before["kafka_offset"] is None
            in_far = await server.acall(server.app.service.far.get(schedule_id))  # type: ignore[union-attr]
            assert (in_far is not None) == (tier == "clickhouse")

            fired: list[Fired] = await asyncio.to_thread(reader.read, 1, 30)
            assert len(fired) == 1
            message = fired[0]
            after = await _until(client, schedule_id, lambda d: d["status"] == "completed")
            _assert_fields(after, fields)
            fired_at = datetime.fromisoformat(after["fired_at"])
            assert due <= fired_at < due + timedelta(seconds=30)
            assert after["lateness_seconds"] == pytest.approx((fired_at - due).total_seconds())
            assert (after["kafka_partition"], after["kafka_offset"]) == (
                message.partition,
                message.offset,
            )
            assert datetime.fromisoformat(after["updated_at"]) >= fired_at

            history = await _until(
                client,
                f"{schedule_id}/history",
                lambda d: d["transitions"][-1]["transition"] == "completed",
            )
            steps = [t["transition"] for t in history["transitions"]]
            moved = ["moved"] if tier == "clickhouse" else []
            assert steps == ["scheduled", *moved, "claimed", "published", "completed"]
            assert history["transitions"][0]["detail"] == ingress
            published = history["transitions"][-2]
            assert published["kafka_offset"] == message.offset
            node = server.app.settings.node_id
            assert {t["node"] for t in history["transitions"][-3:]} == {node}

            # The record outlives Redis's memory of the outcome: once the history is written,
            # drop every key of this store; the record is read from ClickHouse alone.
            lifecycle = server.app.wired.lifecycle
            assert lifecycle is not None
            await _written(server, schedule_id)
            await store.delete_all()
            later = (await _get(client, schedule_id)).json()
            assert later == after
    finally:
        reader.close()


async def _written(server: AppServer, schedule_id: str) -> None:
    """Wait until the event's completion is in the ClickHouse table (not only buffered)."""
    lifecycle = server.app.wired.lifecycle
    assert lifecycle is not None
    for _ in range(300):
        await server.acall(lifecycle.recorder.flush())
        entries = await server.acall(lifecycle._store.history(schedule_id))
        if entries and entries[-1].transition.value == "completed":
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the history was never written")


async def _listed(client: httpx.AsyncClient, count: int, **params: Any) -> list[dict[str, Any]]:
    """Page through the search (2 a page) until ``count`` events are listed; returns them."""
    deadline = time.monotonic() + 30
    while True:
        events: list[dict[str, Any]] = []
        cursor = ""
        while True:
            resp = await _get(client, "", limit=2, cursor=cursor, **params)
            assert resp.status_code == 200, resp.text
            page = resp.json()
            events += page["events"]
            if page["next_cursor"] is None:
                break
            assert len(page["events"]) == 2
            cursor = page["next_cursor"]
        if len(events) >= count or time.monotonic() > deadline:
            return events
        await asyncio.sleep(0.1)


async def test_find_cancel_and_reschedule_by_key_in_both_tiers(
    make_api: ApiFactory, unique: str
) -> None:
    api = make_api(real_service=True)
    key = f"order-{unique}"
    soon = utc_now() + timedelta(hours=1)  # Redis
    later = utc_now() + timedelta(days=10)  # ClickHouse
    docs = [
        {"topic": "a.t", "correlation_id": key, "scheduled_at": soon.isoformat()},
        {"topic": "b.t", "correlation_id": key, "scheduled_at": soon.isoformat()},
        {"topic": "a.t", "correlation_id": key, "scheduled_at": later.isoformat()},
        {"topic": "a.t", "correlation_id": f"other-{unique}", "scheduled_at": soon.isoformat()},
    ]
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        ids = []
        for i, doc in enumerate(docs):
            resp = await client.post(URL, json={**doc, "schedule_id": f"k{i}-{unique}"})
            assert resp.status_code == 201, resp.text
            ids.append(resp.json()["schedule_id"])

        listed = await _listed(client, 3, correlation_id=key)
        assert [e["schedule_id"] for e in listed] == sorted(ids[:3])
        assert {e["status"] for e in listed} == {"pending"}
        assert all(e["correlation_id"] == key for e in listed)
        by_topic = await _listed(client, 2, correlation_id=key, topic="a.t")
        assert {e["schedule_id"] for e in by_topic} == {ids[0], ids[2]}
        due_soon = await _listed(
            client, 2, correlation_id=key, due_before=(soon + timedelta(days=1)).isoformat()
        )
        assert {e["schedule_id"] for e in due_soon} == {ids[0], ids[1]}

        moved = await client.patch(
            URL, params={"correlation_id": key}, json={"scheduled_at": later.isoformat()}
        )
        assert moved.status_code == 200, moved.text
        assert moved.json() == {"correlation_id": key, "redis": 2, "clickhouse": 1, "total": 3}
        for schedule_id in ids[:3]:
            doc = (await _get(client, schedule_id)).json()
            assert datetime.fromisoformat(doc["scheduled_at"]) == later

        cancelled = await client.delete(URL, params={"correlation_id": key})
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json() == {"correlation_id": key, "redis": 0, "clickhouse": 3, "total": 3}
        for schedule_id in ids[:3]:
            doc = (await _get(client, schedule_id)).json()
            assert doc["status"] == "cancelled" and doc["correlation_id"] == key
            history = (await _get(client, f"{schedule_id}/history")).json()
            steps = [t["transition"] for t in history["transitions"]]
            assert steps == ["scheduled", "rescheduled", "cancelled"]
        other = (await _get(client, ids[3])).json()
        assert other["status"] == "pending"
        gone = await _listed(client, 3, correlation_id=key, status="cancelled")
        assert len(gone) == 3
        again = await client.delete(URL, params={"correlation_id": key})
        assert again.json()["total"] == 0
        assert (await client.delete(URL)).status_code == 422


async def test_reschedule_by_key_in_pages_across_both_tiers(
    make_api: ApiFactory, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler, "_BY_KEY_PAGE", 2)  # 5 events: 3 pages
    api = make_api(real_service=True)
    key = f"paged-{unique}"
    soon = utc_now() + timedelta(hours=1)  # Redis
    later = utc_now() + timedelta(days=10)  # ClickHouse
    latest = utc_now() + timedelta(days=20)
    dues = [soon, later, soon, later, later]
    ids = [f"p{i}-{unique}" for i in range(len(dues))]
    async with httpx.AsyncClient(base_url=api.url, timeout=60) as client:
        for schedule_id, due in zip(ids, dues, strict=True):
            doc = {"topic": "p.t", "correlation_id": key, "scheduled_at": due.isoformat()}
            resp = await client.post(URL, json={**doc, "schedule_id": schedule_id})
            assert resp.status_code == 201, resp.text
        await _listed(client, 5, correlation_id=key)

        async def moved_to(when: datetime) -> dict[str, Any]:
            resp = await client.patch(
                URL, params={"correlation_id": key}, json={"scheduled_at": when.isoformat()}
            )
            assert resp.status_code == 200, resp.text
            for schedule_id in ids:
                doc = (await _get(client, schedule_id)).json()
                assert doc["status"] == "pending", doc
                assert datetime.fromisoformat(doc["scheduled_at"]) == when, doc
            return dict(resp.json())

        # Two were in Redis, three in ClickHouse; all end in ClickHouse at the new time.
        expected = {"correlation_id": key, "redis": 2, "clickhouse": 3, "total": 5}
        assert await moved_to(latest) == expected
        # Every one in ClickHouse now (moved there in one write a page), then all due soon.
        expected = {"correlation_id": key, "redis": 0, "clickhouse": 5, "total": 5}
        assert await moved_to(soon) == expected
        expected = {"correlation_id": key, "redis": 5, "clickhouse": 0, "total": 5}
        assert await moved_to(later) == expected
        for schedule_id in ids:
            history = (await _get(client, f"{schedule_id}/history")).json()
            steps = [t["transition"] for t in history["transitions"]]
            assert steps == ["scheduled"] + ["rescheduled"] * 3, (schedule_id, steps)


def _cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "delayline", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_cli_lists_shows_and_cancels_by_key(make_api: ApiFactory, unique: str) -> None:
    api = make_api(real_service=True)
    key = f"cli-{unique}"
    later = (utc_now() + timedelta(days=3)).isoformat()
    for i in range(2):
        doc = {"topic": "t", "correlation_id": key, "scheduled_at": later, "schedule_id": f"c{i}"}
        assert api.client.post(URL, json=doc).status_code == 201
    listed: list[str] = []
    for _ in range(100):  # the search sees an event once its history is written
        listed = _cli("list", "--correlation-id", key, "--api-url", api.url).splitlines()
        if len(listed) == 2:
            break
        time.sleep(0.1)
    assert [line.split("\t")[:2] for line in listed] == [["c0", "pending"], ["c1", "pending"]]
    shown = _cli("show", "c0", "--api-url", api.url)
    assert '"correlation_id": "' + key + '"' in shown
    assert "scheduled http" in shown
    out = _cli("cancel", "--correlation-id", key, "--api-url", api.url)
    assert "cancelled 2 (redis 0, clickhouse 2)" in out
    assert "cancelled" in _cli("show", "c1", "--api-url", api.url).splitlines()[-1]

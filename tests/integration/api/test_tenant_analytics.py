"""Analytics per tenant through the served application (Valkey, chDB, Tansu): each tenant's
key reads only its own tenant's figures; an admin reads every tenant's, summed, or one
tenant's with ``?tenant=``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from delayline.api.keys import ApiKeyEntry

from .conftest import Api, ApiFactory

URL = "/api/v1/schedules"
MON = f"{URL}/monitoring/analytics"
KEYS = {
    "acme": ("acme-key-0123456789abcdef", "acme", "read,schedule"),
    "globex": ("globex-key-0123456789abcd", "globex", "read,schedule"),
    "local": ("local-key-0123456789abcdef", "default", "read,schedule"),
    "admin": ("admin-key-0123456789abcdef", "default", "admin"),
}
FIRED = {"acme": 2, "globex": 3, "local": 1}


def _as(name: str) -> dict[str, str]:
    return {"X-API-Key": KEYS[name][0]}


@pytest.fixture
def tenants(make_api: ApiFactory) -> Api:
    entries = [
        ApiKeyEntry.for_key(key, id=name, tenant=tenant, scopes=scopes)
        for name, (key, tenant, scopes) in KEYS.items()
    ]
    return make_api(real_service=True, api_keys=entries)


async def _summary(client: httpx.AsyncClient, who: str, **params: str) -> dict[str, Any]:
    resp = await client.get(f"{MON}/summary", params=params, headers=_as(who))
    assert resp.status_code == 200, resp.text
    doc: dict[str, Any] = resp.json()
    return doc


async def _performance_total(client: httpx.AsyncClient, who: str, **params: str) -> int:
    resp = await client.get(f"{MON}/performance", params=params, headers=_as(who))
    assert resp.status_code == 200, resp.text
    return sum(int(row["total_executions"]) for row in resp.json())


async def _fire_and_wait(client: httpx.AsyncClient, unique: str) -> None:
    """Each tenant fires its events at once; wait (30 s at most) until the admin's summary
    counts them all (results are written within a flush interval)."""
    for who, count in FIRED.items():
        for i in range(count):
            doc = {
                "topic": f"tenant-analytics-{unique}",
                "schedule_id": f"{who}-{i}",
                "entity_type": "invoice",
                "action": "remind",
                "delay_seconds": 0,
            }
            resp = await client.post(URL, json=doc, headers=_as(who))
            assert resp.status_code == 201, resp.text
    deadline = time.monotonic() + 30
    while (await _summary(client, "admin"))["total_executions"] < sum(FIRED.values()):
        assert time.monotonic() < deadline, "the executions were not recorded"
        await asyncio.sleep(0.2)


async def test_each_tenant_sees_its_own_analytics_and_an_admin_every_tenants(
    tenants: Api, unique: str
) -> None:
    async with httpx.AsyncClient(base_url=tenants.url, timeout=10) as client:
        await _fire_and_wait(client, unique)
        for who, count in FIRED.items():
            summary = await _summary(client, who)
            assert summary["total_executions"] == count, (who, summary)
            assert summary["successful_executions"] == count, (who, summary)
            assert await _performance_total(client, who) == count, who
            by_day = await _performance_total(client, who, granularity="day", action="remind")
            assert by_day == count, who
        # a tenant may name itself, and nobody else
        assert (await _summary(client, "acme", tenant="acme"))["total_executions"] == 2
        for path in ("summary", "performance"):
            resp = await client.get(
                f"{MON}/{path}", params={"tenant": "globex"}, headers=_as("acme")
            )
            assert resp.status_code == 403, resp.text
            assert "admin" in resp.json()["error"]

        total = sum(FIRED.values())
        assert (await _summary(client, "admin"))["total_executions"] == total
        assert await _performance_total(client, "admin") == total
        for who, tenant in (("acme", "acme"), ("globex", "globex"), ("local", "default")):
            filtered = await _summary(client, "admin", tenant=tenant)
            assert filtered["total_executions"] == FIRED[who], (tenant, filtered)
            assert await _performance_total(client, "admin", tenant=tenant) == FIRED[who]
        assert (await _summary(client, "admin", tenant="initech"))["total_executions"] == 0


async def test_an_invalid_tenant_filter_is_a_clear_error(tenants: Api) -> None:
    async with httpx.AsyncClient(base_url=tenants.url, timeout=10) as client:
        for path in ("summary", "performance"):
            resp = await client.get(
                f"{MON}/{path}", params={"tenant": "Acme!"}, headers=_as("admin")
            )
            assert resp.status_code == 422, resp.text
            assert resp.json()["field"] == "tenant"
            assert "tenant 'Acme!'" in resp.json()["error"]

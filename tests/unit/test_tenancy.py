"""The tenancy rule (stored ids per tenant) and the caller's view of it, without a server."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest

from delayline.api.keys import Principal, Scope
from delayline.api.routes_schedules import _search
from delayline.api.schemas import ApiError
from delayline.api.tenants import TenantView
from delayline.domain import tenancy
from delayline.domain.events import ScheduledEvent, new_event
from delayline.domain.outcomes import EventFilter


def test_qualify_and_unqualify() -> None:
    assert tenancy.qualify("default", "order-1") == "order-1"
    assert tenancy.qualify("acme", "order-1") == "@acme/order-1"
    assert tenancy.unqualify("acme", "@acme/order-1") == "order-1"
    assert tenancy.tenant_of("@acme/order-1") == "acme"
    assert tenancy.tenant_of("order-1") == "default"
    with pytest.raises(tenancy.TenancyError):
        tenancy.qualify("default", "@acme/order-1")  # the default tenant cannot name it
    with pytest.raises(tenancy.TenancyError):
        tenancy.unqualify("globex", "@acme/order-1")
    assert not tenancy.owns("acme", "@acme-2/x") and not tenancy.owns("acme", "x")
    assert tenancy.owns("default", "x") and not tenancy.owns("default", "@acme/x")
    with pytest.raises(tenancy.TenancyError, match="lowercase"):
        tenancy.check_tenant("Acme")


def test_a_tenants_view() -> None:
    acme = TenantView(Principal("k", "acme", frozenset({Scope.READ})))
    assert acme.stored("x") == "@acme/x" and acme.shown("@acme/x") == "x"
    assert acme.sees("@acme/x") and not acme.sees("x") and not acme.sees("@globex/x")
    assert acme.new_id("y" * 194) == "@acme/" + "y" * 194
    with pytest.raises(ApiError, match="at most 194 characters"):
        acme.new_id("y" * 195)
    local = TenantView(Principal("k", "default", frozenset({Scope.READ})))
    assert local.stored("@acme/x") is None
    with pytest.raises(ApiError, match="may not start with '@'"):
        local.new_key("@acme/k")
    admin = TenantView(Principal("k", "acme", frozenset({Scope.ADMIN})))
    assert admin.stored("@globex/x") == "@globex/x" and admin.shown("x") == "x"


class Found:
    """``find_events`` over a fixed set of ids, in id order, counting its calls."""

    def __init__(self, ids: list[str]) -> None:
        base = new_event(topic="t", scheduled_at=datetime(2030, 1, 1))
        self.events = sorted((replace(base, schedule_id=i) for i in ids), key=_id)
        self.calls = 0

    async def find_events(
        self, match: EventFilter, *, after: str = "", limit: int = 100
    ) -> list[ScheduledEvent]:
        self.calls += 1
        return [e for e in self.events if e.schedule_id > after][:limit]


def _id(event: ScheduledEvent) -> str:
    return event.schedule_id


IDS = ["+a", "0b", "9c", "@acme/1", "@acme/2", "@acme/3", "@b/1", "@globex/1", "Ad", "zz"]


@pytest.mark.parametrize(
    ("tenant", "expected"),
    [
        ("default", ["+a", "0b", "9c", "Ad", "zz"]),
        ("acme", ["@acme/1", "@acme/2", "@acme/3"]),
        ("globex", ["@globex/1"]),
        ("nobody", []),
    ],
)
async def test_search_pages_through_the_tenants_ids_only(tenant: str, expected: list[str]) -> None:
    view = TenantView(Principal("k", tenant, frozenset({Scope.READ})))
    for limit in (1, 2, 3, 10):
        service: Any = Found(IDS)
        listed: list[str] = []
        cursor = ""
        while True:
            page = await _search(service, view, EventFilter(), cursor, limit)
            listed += [e.schedule_id for e in page]
            if len(page) < limit:
                break
            cursor = view.shown(page[-1].schedule_id)
        assert listed == expected, limit
        assert service.calls <= len(IDS) + 2  # jumps over foreign ranges, never loops

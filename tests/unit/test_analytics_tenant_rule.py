"""The analytics' SQL tenant rule gives, in chDB, the tenant ``domain.tenancy`` gives."""

from __future__ import annotations

from delayline.adapters.clickhouse.analytics_schema import TENANT_OF_SCHEDULE_ID
from delayline.adapters.clickhouse.client import ClickHouseClient
from delayline.domain import tenancy

SAMPLE_IDS = [
    "order-1",
    "",
    "@",
    "@/x",
    "@acme/order-1",
    "@acme/",
    "@acme/a/b",
    "@acme",
    "@Acme/x",
    "@-acme/x",
    "@_x/y",
    "@a_b-9/z",
    "@9/z",
    "@" + "a" * 32 + "/x",
    "@" + "a" * 33 + "/x",
    "@acme x/y",
    "@acmé/x",
    "@default/x",
    "a@acme/x",
    " @acme/x",
    "@acme\n/x",
    "@acme\\/x",
    "plain/with/slashes",
    "ünïcode-@/x",
]


async def test_the_sql_rule_matches_the_python_rule(clickhouse_root: ClickHouseClient) -> None:
    rows = await clickhouse_root.query(
        f"SELECT schedule_id, {TENANT_OF_SCHEDULE_ID} "
        "FROM (SELECT arrayJoin({ids:Array(String)}) AS schedule_id)",
        {"ids": SAMPLE_IDS},
    )
    got = {str(stored): str(tenant) for stored, tenant in rows}
    assert got == {stored: tenancy.tenant_of(stored) for stored in SAMPLE_IDS}
    assert got["@acme/a/b"] == "acme"
    assert got["@" + "a" * 33 + "/x"] == tenancy.DEFAULT_TENANT

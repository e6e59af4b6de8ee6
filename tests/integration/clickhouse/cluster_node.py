"""Run as a subprocess, in a folder whose ``config.xml`` defines the cluster ``delayline_test``
(one shard: this process): the schema's cluster DDL and the long-term store on it, in chDB.

chDB has no ZooKeeper/Keeper and refuses ``ON CLUSTER``, so each generated statement runs with
its ``ON CLUSTER`` clause removed and a ``Replicated*MergeTree(path, replica, args)`` engine as
``*MergeTree(args)``; every other word (the ``Distributed`` tables, the local tables' columns,
the ``ALTER`` and ``OPTIMIZE`` targets) runs as generated. Prints ``OK`` and the checks passed.
"""

from __future__ import annotations

import asyncio
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from delayline.adapters.clickhouse.client import ClickHouseClient
from delayline.adapters.clickhouse.long_term_store import ClickHouseLongTermStore
from delayline.adapters.clickhouse.migrations import run_migrations
from delayline.domain.events import new_event

CLUSTER = "delayline_test"
_REPLICATED = re.compile(r"Replicated(\w*MergeTree)\('[^']*', '\{replica\}'(?:, )?")


class SingleProcessCluster(ClickHouseClient):
    """A client on a cluster that runs each statement as far as chDB can (module docstring)."""

    ran: list[str]

    async def command(self, sql: str, parameters: Any = None) -> Any:
        self.ran.append(sql)
        runnable = _REPLICATED.sub(r"\1(", sql.replace(f" ON CLUSTER {CLUSTER}", ""))
        return await super().command(runnable, parameters)


async def main(folder: str) -> int:
    client = SingleProcessCluster(f"chdb://{folder}", "clustered", CLUSTER)
    client.ran = []
    await client.start()
    try:
        assert await run_migrations(client, ttl_days=30), "nothing applied"
        assert await run_migrations(client, ttl_days=30) == []  # idempotent
        tables = await client.query(
            "SELECT name, engine FROM system.tables WHERE database = 'clustered'"
        )
        engines = {str(name): str(engine) for name, engine in tables}
        assert engines["event_schedules"] == "Distributed", engines
        assert engines["event_schedules_local"] == "ReplacingMergeTree", engines
        assert engines["event_lifecycle"] == "Distributed", engines
        assert engines["schedule_execution_results"] == "Distributed", engines
        assert any("ON CLUSTER delayline_test" in sql for sql in client.ran)
        print("migrated", flush=True)

        store = ClickHouseLongTermStore(client)
        now = datetime.now(UTC).replace(microsecond=0)
        events = [
            new_event(topic="t", body={"n": i}, scheduled_at=now + timedelta(days=2, seconds=i),
                      schedule_id=f"e{i}")
            for i in range(5)
        ]  # fmt: skip
        assert await store.insert(events) == [True] * 5
        assert await store.insert(events[:1]) == [False]
        got = await store.get("e0")
        assert got is not None and got.body == events[0].body
        page = await store.due_before(now + timedelta(days=3), 3)
        assert [e.schedule_id for e in page.events] == ["e0", "e1", "e2"]
        assert await store.cancel("e1")
        assert await store.mark_queued(page) == ["e1"]
        assert await store.reschedule("e3", now + timedelta(days=10))
        rest = await store.due_before(now + timedelta(days=3), 10)
        assert [e.schedule_id for e in rest.events] == ["e4"]
        counts = await store.counts()
        assert (counts["queued"], counts["cancelled"], counts["pending"]) == (2, 1, 2), counts
        assert await store.cleanup(now + timedelta(days=4)) == 3  # through the local table
        assert await store.get("e0") is None
        print("store", flush=True)
    finally:
        await client.stop()
    print("OK", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1])))

"""The schema on a ClickHouse cluster (``SCHEDULES_CLICKHOUSE_CLUSTER``).

Each table of the single-node schema becomes two, created ``ON CLUSTER``:

* ``<name>_local`` on every node, the same columns in the ``Replicated`` form of its engine,
  replicated through ZooKeeper/Keeper under ``/clickhouse/tables/{shard}/<db>/<name>_local``
  (``{shard}`` and ``{replica}`` are each server's macros);
* ``<name>``, a ``Distributed`` table over them, so every query runs unchanged.

Rows are spread by :data:`SHARDING_KEYS`: every version of an event lands on one shard (by
``schedule_id``), so the current version is still decided within one ``ReplacingMergeTree``,
by the same rule as on one node. Statements that change a table's data or storage (``ALTER``,
``OPTIMIZE``) go to the local tables; an ``ADD COLUMN`` goes to both. A materialized view
reads and writes local tables (each shard aggregates its own rows), a plain view reads the
distributed ones. Every statement keeps its ``IF [NOT] EXISTS``: running the migrations again,
or from two nodes at once, changes nothing.
"""

from __future__ import annotations

import re

LOCAL_SUFFIX = "_local"
SHARDING_KEYS = {
    "event_schedules": "cityHash64(schedule_id)",
    "event_lifecycle": "cityHash64(schedule_id)",
}
"""Tables whose rows of one event must share a shard; the others spread by ``rand()``."""

_CREATE_TABLE = re.compile(r"^CREATE TABLE IF NOT EXISTS (\w+)\.(\w+) (.*)$", re.S)
_ENGINE = re.compile(r"\bENGINE = (\w*MergeTree)(?:\(([^()]*)\))?")
_MATERIALIZED_VIEW = re.compile(
    r"^CREATE MATERIALIZED VIEW IF NOT EXISTS (\w+\.\w+) TO (\w+)\.(\w+) (.*)$", re.S
)
_VIEW = re.compile(r"^CREATE VIEW IF NOT EXISTS (\w+\.\w+) (.*)$", re.S)
_ALTER = re.compile(r"^ALTER TABLE (\w+\.\w+) (.*)$", re.S)
_OPTIMIZE = re.compile(r"^OPTIMIZE TABLE (\w+\.\w+) (.*)$", re.S)
_FROM = re.compile(r"\bFROM (\w+)\.(\w+)")


def zookeeper_path(database: str, table: str) -> str:
    """Where the replicas of a local table meet in ZooKeeper/Keeper."""
    return f"/clickhouse/tables/{{shard}}/{database}/{table}"


def for_cluster(statement: str, cluster: str) -> list[str]:
    """The statements that do on ``cluster`` what ``statement`` does on one node.

    ``statement`` is one of the schema's own (already formatted) statements; any other form
    is refused, so a new migration cannot silently run on one node only.
    """
    on = f"ON CLUSTER {cluster}"
    if match := _CREATE_TABLE.match(statement):
        return _create_table(match[1], match[2], match[3], cluster)
    if match := _MATERIALIZED_VIEW.match(statement):
        body = _FROM.sub(rf"FROM \1.\2{LOCAL_SUFFIX}", match[4])
        return [
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {match[1]} {on} "
            f"TO {match[2]}.{match[3]}{LOCAL_SUFFIX} {body}"
        ]
    if match := _VIEW.match(statement):
        return [f"CREATE VIEW IF NOT EXISTS {match[1]} {on} {match[2]}"]
    if match := _ALTER.match(statement):
        local = f"ALTER TABLE {match[1]}{LOCAL_SUFFIX} {on} {match[2]}"
        if match[2].startswith("ADD COLUMN "):
            return [local, f"ALTER TABLE {match[1]} {on} {match[2]}"]
        return [local]
    if match := _OPTIMIZE.match(statement):
        return [f"OPTIMIZE TABLE {match[1]}{LOCAL_SUFFIX} {on} {match[2]}"]
    raise ValueError(f"no cluster form for the statement: {statement[:80]}")


def _create_table(database: str, table: str, rest: str, cluster: str) -> list[str]:
    engine = _ENGINE.search(rest)
    if engine is None:
        raise ValueError(f"table {database}.{table}: no MergeTree engine to replicate")
    local = table + LOCAL_SUFFIX
    args = [f"'{zookeeper_path(database, local)}'", "'{replica}'"]
    if engine[2]:
        args.append(engine[2])
    replicated = f"ENGINE = Replicated{engine[1]}({', '.join(args)})"
    sharding_key = SHARDING_KEYS.get(table, "rand()")
    return [
        f"CREATE TABLE IF NOT EXISTS {database}.{local} ON CLUSTER {cluster} "
        + rest[: engine.start()]
        + replicated
        + rest[engine.end() :],
        f"CREATE TABLE IF NOT EXISTS {database}.{table} ON CLUSTER {cluster} "
        f"AS {database}.{local} "
        f"ENGINE = Distributed({cluster}, {database}, {local}, {sharding_key})",
    ]


def local_table(table: str, cluster: str) -> str:
    """The table that holds ``table``'s rows on this node (``table`` itself on one node), with
    the ``ON CLUSTER`` clause an ``ALTER`` of it needs."""
    return f"{table}{LOCAL_SUFFIX} ON CLUSTER {cluster}" if cluster else table

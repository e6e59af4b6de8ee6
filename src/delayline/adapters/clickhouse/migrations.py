"""Versioned, idempotent schema migrations, recorded in ``schema_migrations``.

A migration is ``(version, name, statements)``. Versions 1–99 are the scheduling tables (here),
100 and up the analytics tables (``analytics_schema.ANALYTICS_MIGRATIONS``). Statements are
formatted with ``str.format(db=…, ttl_days=…)``, so they contain no other braces. Every
statement is itself idempotent (``IF NOT EXISTS``), so two nodes migrating at once, or a run
killed between a statement and its record, converge on the same schema when run again.

Why ``event_schedules`` looks like this (the costs behind each choice: BENCHMARKS.md, longterm):

* Status changes and reschedules are new-version rows in a ``ReplacingMergeTree(version)``:
  ``ALTER … UPDATE`` took seconds and cannot touch a sort-key column. ``version`` is a logical
  per-event counter rather than ``updated_at``: user actions write ``current + 2`` and the
  sync's ``queued`` writes ``read + 1``, so a cancel always beats a concurrent ``queued`` no
  matter how the nodes' clocks disagree (see ``long_term_store``).
* Sort key ``schedule_id`` alone: it never changes for an event, so every version of an event
  collapses, and a point lookup reads one granule. A key starting with the due time would put
  a rescheduled event's versions under different keys, where they never replace each other.
* Partitions by ``toYYYYMM(created_at)``, which every version copies unchanged: all versions of
  an event share a partition, so ``FINAL`` may skip merging across partitions
  (``do_not_merge_across_partitions_select_final``), which is faster than merging them all
  and much faster than ``argMax`` per ``GROUP BY schedule_id``.
* TTL: a version row expires ``ttl_days`` after its ``retain_from``, a time carried forward
  as the maximum over the event's versions of their ``scheduled_at`` and ``updated_at``. It
  never decreases from one version to the next, so a newer row (a ``cancelled`` one) never
  expires before an older one (its ``pending`` one), which would revive the event. Finished
  events are deleted whole by ``ClickHouseLongTermStore.cleanup`` first; the TTL is a backstop.

Migration 2 (the sync's ``FINAL`` read of the next due events reads the whole table; a minmax
skip index on ``scheduled_at`` cannot help, as random ids put due rows in every
granule): a ``listed_at`` column and a projection ``by_listed``, a copy of the rows sorted by
it, so the sync reads only the rows it needs, without ``FINAL`` (``long_term_store`` explains
why that is exact). The copy doubles the table's size on disk. ``ReplacingMergeTree`` accepts a
projection only when merges and lightweight deletes rebuild it (the two settings). On an
existing table, rows written before have ``listed_at = scheduled_at``; ``OPTIMIZE … FINAL``
leaves one row per event, so no older version of a rescheduled event remains that the rule
would need, and builds the projection of every part (``MATERIALIZE`` makes sure).

On a cluster (``SCHEDULES_CLICKHOUSE_CLUSTER``) each statement runs in its ``ON CLUSTER`` form:
replicated local tables and ``Distributed`` tables over them under the names above
(``cluster_ddl``).

Migration 3: ``event_lifecycle``, one row per transition of an event (scheduled, moved,
claimed, published, retried, completed, failed, skipped, cancelled), written in batches off the
firing path (``services.lifecycle``). Most rows carry a snapshot of the event, so the record of
an event that fired or was cancelled — its ``event_schedules`` row, if it had one, still reads
``queued`` — is assembled from here; repeated bodies of one event sit next to each other in
the sort order ``(schedule_id, at)`` and compress away. A row expires ``ttl_days`` after the
later of its transition and the event's due time (``retain_from``). The ``by_correlation``
projection (ids sorted by correlation id) answers look-ups by business key without a scan.
"""

from __future__ import annotations

from collections.abc import Callable

from delayline.adapters.clickhouse.cluster_ddl import for_cluster
from delayline.domain.events import EventStatus
from delayline.ports import ClickHouseQueries

MIGRATIONS_TABLE = "schema_migrations"
EVENTS_TABLE = "event_schedules"

Migration = tuple[int, str, list[str]]

STATUS_ENUM = "Enum8({})".format(
    ", ".join(f"'{status.value}' = {n}" for n, status in enumerate(EventStatus, start=1))
)
"""The ``status`` column type: every :class:`EventStatus`, numbered in declaration order."""

_EVENTS = f"""
CREATE TABLE IF NOT EXISTS {{db}}.{EVENTS_TABLE} (
    schedule_id String,
    topic LowCardinality(String),
    entity_type LowCardinality(String),
    action LowCardinality(String),
    body String CODEC(ZSTD(1)),
    correlation_id String,
    headers String,
    scheduled_at DateTime64(6, 'UTC'),
    max_delay_seconds UInt32 DEFAULT 86400,
    priority Int32 DEFAULT 0,
    status {STATUS_ENUM},
    created_at DateTime64(6, 'UTC'),
    updated_at DateTime64(6, 'UTC'),
    attempts UInt32 DEFAULT 0,
    last_error String DEFAULT '',
    version UInt64,
    retain_from DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(created_at)
ORDER BY schedule_id
TTL toDateTime(retain_from) + INTERVAL {{ttl_days}} DAY
"""

BY_LISTED_PROJECTION = "by_listed"

_BY_LISTED = [
    f"ALTER TABLE {{db}}.{EVENTS_TABLE} ADD COLUMN IF NOT EXISTS "
    "listed_at DateTime64(6, 'UTC') DEFAULT scheduled_at",
    f"ALTER TABLE {{db}}.{EVENTS_TABLE} MODIFY SETTING "
    "deduplicate_merge_projection_mode = 'rebuild', "
    "lightweight_mutation_projection_mode = 'rebuild'",
    f"ALTER TABLE {{db}}.{EVENTS_TABLE} ADD PROJECTION IF NOT EXISTS {BY_LISTED_PROJECTION} "
    "(SELECT * ORDER BY listed_at)",
    f"OPTIMIZE TABLE {{db}}.{EVENTS_TABLE} FINAL",
    f"ALTER TABLE {{db}}.{EVENTS_TABLE} MATERIALIZE PROJECTION {BY_LISTED_PROJECTION} "
    "SETTINGS mutations_sync = 2",
]

LIFECYCLE_TABLE = "event_lifecycle"
BY_KEY_PROJECTION = "by_correlation"

_LIFECYCLE = f"""
CREATE TABLE IF NOT EXISTS {{db}}.{LIFECYCLE_TABLE} (
    schedule_id String,
    at DateTime64(6, 'UTC'),
    transition LowCardinality(String),
    node LowCardinality(String),
    detail String,
    kafka_partition Nullable(Int32),
    kafka_offset Nullable(Int64),
    has_snapshot UInt8,
    topic LowCardinality(String),
    entity_type LowCardinality(String),
    action LowCardinality(String),
    correlation_id String,
    body String CODEC(ZSTD(1)),
    headers String CODEC(ZSTD(1)),
    scheduled_at DateTime64(6, 'UTC'),
    max_delay_seconds UInt32,
    priority Int32,
    created_at DateTime64(6, 'UTC'),
    attempts UInt32,
    last_error String,
    retain_from DateTime64(6, 'UTC'),
    PROJECTION {BY_KEY_PROJECTION} (
        SELECT correlation_id, schedule_id ORDER BY correlation_id, schedule_id
    )
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (schedule_id, at)
TTL toDateTime(retain_from) + INTERVAL {{ttl_days}} DAY
"""

AUDIT_TABLE = "audit_log"
_AUDIT = f"""
CREATE TABLE IF NOT EXISTS {{db}}.{AUDIT_TABLE} (
    id String,
    at DateTime64(6, 'UTC'),
    key_id LowCardinality(String),
    tenant LowCardinality(String),
    action LowCardinality(String),
    parameters String,
    outcome String
) ENGINE = MergeTree
ORDER BY id
"""
"""Migration 4: ``audit_log``, one row per audited action (``services.audit``). The id starts
with the time, so the sort key serves both the time range and the paging cursor. No TTL: the
trail is small (admin actions only) and is kept until removed on purpose."""

CORE_MIGRATIONS: list[Migration] = [
    (1, "event_schedules: versioned schedule rows", [_EVENTS.strip()]),
    (2, "event_schedules: listed_at and the by_listed projection for the sync", _BY_LISTED),
    (3, "event_lifecycle: every transition of every event", [_LIFECYCLE.strip()]),
    (4, "audit_log: every mutating admin action", [_AUDIT.strip()]),
]


def all_migrations() -> list[Migration]:
    """Core migrations plus the analytics ones (when that module exists), sorted by version."""
    migrations = list(CORE_MIGRATIONS)
    try:
        from delayline.adapters.clickhouse.analytics_schema import ANALYTICS_MIGRATIONS
    except ImportError:  # analytics not installed in this build
        pass
    else:
        migrations.extend(ANALYTICS_MIGRATIONS)
    versions = [m[0] for m in migrations]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions in {sorted(versions)}")
    return sorted(migrations, key=lambda m: m[0])


def statements_for(client: ClickHouseQueries, statement: str) -> list[str]:
    """``statement`` as it runs on ``client``'s deployment: itself on one node, its
    ``ON CLUSTER`` form (``cluster_ddl``) on a cluster."""
    return for_cluster(statement, client.cluster) if client.cluster else [statement]


async def _run(client: ClickHouseQueries, statement: str) -> None:
    for one in statements_for(client, statement):
        await client.command(one)


async def applied_versions(client: ClickHouseQueries) -> set[int]:
    """Versions recorded in ``schema_migrations`` (creating that table if needed)."""
    db = client.database
    if client.cluster:
        await client.command(f"CREATE DATABASE IF NOT EXISTS {db} ON CLUSTER {client.cluster}")
    await _run(
        client,
        f"CREATE TABLE IF NOT EXISTS {db}.{MIGRATIONS_TABLE} "
        "(version UInt32, name String, applied_at DateTime64(6, 'UTC')) "
        "ENGINE = ReplacingMergeTree ORDER BY version",
    )
    rows = await client.query(f"SELECT DISTINCT version FROM {db}.{MIGRATIONS_TABLE}")
    return {int(row[0]) for row in rows}


async def run_migrations(
    client: ClickHouseQueries,
    *,
    ttl_days: int,
    progress: Callable[[str], None] | None = None,
    migrations: list[Migration] | None = None,
) -> list[str]:
    """Apply every migration not yet recorded, in version order; the names applied.

    Running it again applies nothing. ``progress`` receives one line per step.
    """
    say = progress or (lambda _line: None)
    db = client.database
    done = await applied_versions(client)
    todo = [m for m in (migrations if migrations is not None else all_migrations())]
    todo = [m for m in sorted(todo, key=lambda m: m[0]) if m[0] not in done]
    if not todo:
        say(f"database {db}: schema is up to date")
        return []
    applied: list[str] = []
    for version, name, statements in todo:
        say(f"database {db}: applying {version:03d} {name}")
        for statement in statements:
            await _run(client, statement.format(db=db, ttl_days=int(ttl_days)))
        await client.command(
            f"INSERT INTO {db}.{MIGRATIONS_TABLE} (version, name, applied_at) "
            "VALUES ({v:UInt32}, {n:String}, now64(6, 'UTC'))",
            {"v": version, "n": name},
        )
        applied.append(name)
    say(f"database {db}: applied {len(applied)} migration(s)")
    return applied

"""The analytics tables: execution results, hourly aggregates and the metrics view.

``ANALYTICS_MIGRATIONS`` is applied by the migration runner (``migrations.py``) after the
scheduling tables. Each entry is ``(version, name, statements)``; every statement is formatted
with ``str.format(db=…, ttl_days=…)`` before it runs, so it must contain no other braces.

Why this shape:

* ``schedule_execution_results`` has one row per execution (the columns the analytics API
  documents). Rows expire after ``EXECUTION_HISTORY_TTL_DAYS``; partitions are per day and
  ``ttl_only_drop_parts`` lets the TTL drop whole day-parts instead of rewriting them.
* A SummingMergeTree cannot sum percentiles, so a materialized view feeds
  ``schedule_performance_metrics_hourly``, an AggregatingMergeTree holding aggregate *states*
  per hour and (tenant, entity_type, action, topic):
  counts, averages and ``quantilesState(0.5, 0.95, 0.99)`` of the lateness. Any time range is
  answered by merging the states over that range (``quantilesMerge``), so a daily or weekly p99
  is a true p99 of the executions, never an average of hourly percentiles.
* ``schedule_performance_metrics`` is a plain view with the documented name and columns, merging the
  states per hour. The hourly table keeps one year.
* ``quantiles`` (reservoir sampling, 8192 values per state) rather than ``quantilesTDigest`` or
  ``quantilesExact``: exact (linear interpolation, like numpy's default) while a merged group
  holds at most 8192 executions, a uniform sample beyond that (rank error ≈ 1 %), and a bounded
  state size. ``quantilesExact`` states would store every value, as big as the raw table.
* ``tenant`` is derived from the result's ``schedule_id`` by :data:`TENANT_OF_SCHEDULE_ID`,
  so each tenant's figures can be read alone.
* Hours and dates are UTC whatever the server's time zone: the hourly key is a
  ``DateTime('UTC')`` and the result columns are read with explicit ``'UTC'``.
* Lateness statistics include every execution, skipped ones too (their lateness is what made
  them skipped); filter by status on the raw table for firing-only lateness.
"""

from __future__ import annotations

from typing import Final

RESULTS_TABLE: Final = "schedule_execution_results"
HOURLY_TABLE: Final = "schedule_performance_metrics_hourly"
HOURLY_MV: Final = "schedule_performance_metrics_mv"
METRICS_VIEW: Final = "schedule_performance_metrics"

TENANT_OF_SCHEDULE_ID: Final = (
    "if(match(schedule_id, '^@[a-z0-9][a-z0-9_-]*/') AND position(schedule_id, '/') <= 34, "
    "substring(schedule_id, 2, position(schedule_id, '/') - 2), 'default')"
)
"""The tenant of a stored schedule id, by the rule of ``domain.tenancy.tenant_of``: an id
``@<tenant>/…`` whose tenant is a valid name (1-32 of ``[a-z0-9_-]``, starting with a letter
or digit: ``/`` is then at most the 34th character) is that tenant's; any other id is the
default tenant's. No braces: the statements go through ``str.format``."""


_RESULTS = f"""
CREATE TABLE IF NOT EXISTS {{db}}.{RESULTS_TABLE} (
    execution_id String,
    schedule_id String,
    correlation_id String,
    topic String,
    entity_type String,
    action String,
    scheduled_at DateTime64(6),
    executed_at DateTime64(6),
    delay_seconds Float64,
    status Enum8('success' = 1, 'error' = 2, 'timeout' = 3, 'skipped' = 4),
    error_message Nullable(String),
    retry_count UInt8,
    processing_time_ms UInt32,
    node_id String,
    created_at DateTime64(6)
)
ENGINE = MergeTree()
PARTITION BY toYYYYMMDD(executed_at, 'UTC')
ORDER BY (toYYYYMMDD(executed_at, 'UTC'), status, entity_type, action)
TTL toDateTime(executed_at) + INTERVAL {{ttl_days}} DAY DELETE
SETTINGS ttl_only_drop_parts = 1
"""

_HOURLY = f"""
CREATE TABLE IF NOT EXISTS {{db}}.{HOURLY_TABLE} (
    hour_start DateTime('UTC'),
    tenant LowCardinality(String),
    entity_type String,
    action String,
    topic String,
    total_executions AggregateFunction(count),
    successful_executions AggregateFunction(countIf, UInt8),
    failed_executions AggregateFunction(countIf, UInt8),
    skipped_executions AggregateFunction(countIf, UInt8),
    avg_delay_seconds AggregateFunction(avg, Float64),
    avg_processing_time_ms AggregateFunction(avg, UInt32),
    delay_quantiles AggregateFunction(quantiles(0.5, 0.95, 0.99), Float64)
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(hour_start)
ORDER BY (hour_start, tenant, entity_type, action, topic)
TTL hour_start + INTERVAL 1 YEAR DELETE
"""

# "failed" is every non-success, non-skipped outcome: error and timeout.
_MV = f"""
CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.{HOURLY_MV} TO {{db}}.{HOURLY_TABLE} AS
SELECT
    toStartOfHour(toDateTime(executed_at, 'UTC')) AS hour_start,
    {TENANT_OF_SCHEDULE_ID} AS tenant,
    entity_type,
    action,
    topic,
    countState() AS total_executions,
    countIfState(status = 'success') AS successful_executions,
    countIfState(status IN ('error', 'timeout')) AS failed_executions,
    countIfState(status = 'skipped') AS skipped_executions,
    avgState(delay_seconds) AS avg_delay_seconds,
    avgState(processing_time_ms) AS avg_processing_time_ms,
    quantilesState(0.5, 0.95, 0.99)(delay_seconds) AS delay_quantiles
FROM {{db}}.{RESULTS_TABLE}
GROUP BY hour_start, tenant, entity_type, action, topic
"""

_VIEW = f"""
CREATE VIEW IF NOT EXISTS {{db}}.{METRICS_VIEW} AS
SELECT
    toDate(hour_start, 'UTC') AS date,
    toHour(hour_start, 'UTC') AS hour,
    tenant,
    entity_type,
    action,
    topic,
    countMerge(total_executions) AS total_executions,
    countIfMerge(successful_executions) AS successful_executions,
    countIfMerge(failed_executions) AS failed_executions,
    countIfMerge(skipped_executions) AS skipped_executions,
    avgMerge(avg_delay_seconds) AS avg_delay_seconds,
    avgMerge(avg_processing_time_ms) AS avg_processing_time_ms,
    quantilesMerge(0.5, 0.95, 0.99)(delay_quantiles)[1] AS p50_delay_seconds,
    quantilesMerge(0.5, 0.95, 0.99)(delay_quantiles)[2] AS p95_delay_seconds,
    quantilesMerge(0.5, 0.95, 0.99)(delay_quantiles)[3] AS p99_delay_seconds
FROM {{db}}.{HOURLY_TABLE}
GROUP BY hour_start, tenant, entity_type, action, topic
"""

ANALYTICS_MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        100,
        "analytics: execution results, hourly aggregates, performance metrics view",
        [_RESULTS.strip(), _HOURLY.strip(), _MV.strip(), _VIEW.strip()],
    ),
]
"""Versions 100 and up belong to analytics; the runner applies them in order, once each."""

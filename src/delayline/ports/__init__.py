"""The ports: every boundary between the services and the outside world, as Protocols.

Services depend on these names only; adapters implement them without importing each other;
``bootstrap`` wires one to the other. One module per area:

- :mod:`.stores`: the Redis and ClickHouse tiers, the sync's lease, key rotation;
- :mod:`.messaging`: the delayed topic (consumed) and the fired events (published);
- :mod:`.records`: execution results and lifecycle transitions, written and read back;
- :mod:`.api`: what the HTTP API, the Kafka consumer and the CLI need from the services;
- :mod:`.ownership`: node membership and fenced shard leases;
- :mod:`.clickhouse`: the ClickHouse client as the ClickHouse adapters use it;
- :mod:`.clock`: wall-clock time.
"""

from delayline.ports.api import (
    AnalyticsApi,
    HealthCheck,
    KeyRotator,
    SchedulerApi,
    SyncRunner,
)
from delayline.ports.clickhouse import ClickHouseQueries
from delayline.ports.clock import Clock
from delayline.ports.messaging import DelayedMessage, EventPublisher, MessageSource
from delayline.ports.ownership import ShardLeases
from delayline.ports.records import (
    AnalyticsReader,
    AuditStore,
    Granularity,
    LifecycleSink,
    LifecycleStore,
    OutcomeSink,
    ResultWriter,
)
from delayline.ports.stores import (
    Claim,
    DuePage,
    Finished,
    Lease,
    LongTermStore,
    NearTermStore,
    PageT,
    RekeyableTier,
    RekeyPage,
    Upserted,
)

__all__ = [
    "AnalyticsApi",
    "AnalyticsReader",
    "AuditStore",
    "Claim",
    "ClickHouseQueries",
    "Clock",
    "DelayedMessage",
    "DuePage",
    "EventPublisher",
    "Finished",
    "Granularity",
    "HealthCheck",
    "KeyRotator",
    "Lease",
    "LifecycleSink",
    "LifecycleStore",
    "LongTermStore",
    "MessageSource",
    "NearTermStore",
    "OutcomeSink",
    "PageT",
    "RekeyPage",
    "RekeyableTier",
    "ResultWriter",
    "SchedulerApi",
    "ShardLeases",
    "SyncRunner",
    "Upserted",
]

"""Wiring: adapters connected to the services, in one function; part of the composition root
(:mod:`delayline.bootstrap` enters and starts what this builds).
"""

from __future__ import annotations

from dataclasses import dataclass

from delayline.adapters.clickhouse.analytics_store import ClickHouseAnalyticsStore
from delayline.adapters.clickhouse.audit_store import ClickHouseAuditStore
from delayline.adapters.clickhouse.client import ClickHouseClient
from delayline.adapters.clickhouse.lifecycle_store import ClickHouseLifecycleStore
from delayline.adapters.clickhouse.long_term_store import ClickHouseLongTermStore, DuePage
from delayline.adapters.encryption import PayloadCipher
from delayline.adapters.guarded import (
    GuardedAuditStore,
    GuardedLifecycleStore,
    GuardedLongTermStore,
    GuardedNearTermStore,
)
from delayline.adapters.redis_connect import RedisClient, RedisServers
from delayline.adapters.redis_layout import control_tag
from delayline.adapters.redis_lease import RedisLease
from delayline.adapters.redis_sharded import ShardedNearTermStore
from delayline.metrics import Metrics
from delayline.ports import Clock, RekeyableTier
from delayline.resilience import CircuitBreaker
from delayline.services.analytics import AnalyticsRecorder, ScheduleAnalyticsService
from delayline.services.audit import AuditedRotation, AuditRecorder, AuditService
from delayline.services.lifecycle import LifecycleRecorder, LifecycleService
from delayline.services.rotation import KeyRotation
from delayline.services.scheduler import SchedulerService
from delayline.services.sync import SyncService
from delayline.settings import Settings


@dataclass(frozen=True)
class Wired:
    """The adapters and services of one process, built once its stores are connected."""

    redis: RedisClient  # the server of the control keys
    clickhouse: ClickHouseClient
    near: GuardedNearTermStore[ShardedNearTermStore]
    far: GuardedLongTermStore[DuePage]
    lifecycle: LifecycleService
    sync: SyncService[DuePage]
    service: SchedulerService
    analytics: ScheduleAnalyticsService
    analytics_recorder: AnalyticsRecorder
    rotation: KeyRotation | None
    audit: AuditService
    audited_rotation: AuditedRotation | None
    """The rotation as the API starts it: each step and its end in the audit trail."""


def build_audit(
    clickhouse: ClickHouseClient, breaker: CircuitBreaker, settings: Settings, clock: Clock
) -> AuditService:
    """The audit trail in ClickHouse: reads answer 503 while it is down, writes wait in the
    recorder's buffer."""
    store = ClickHouseAuditStore(clickhouse)
    recorder = AuditRecorder(
        store,
        batch_size=settings.analytics_batch_size,
        flush_interval=settings.analytics_flush_interval,
    )
    return AuditService(GuardedAuditStore(store, breaker), recorder, clock)


def wire(
    settings: Settings,
    servers: RedisServers,
    clickhouse: ClickHouseClient,
    *,
    clock: Clock,
    breakers: dict[str, CircuitBreaker],
    cipher: PayloadCipher | None,
    metrics: Metrics,
) -> Wired:
    """Connect the adapters to the services (nothing is started here)."""
    s = settings
    redis = servers.control
    near_store = ShardedNearTermStore(
        servers,
        prefix=s.redis_key_prefix,
        result_ttl_seconds=s.result_ttl_seconds,
        cipher=cipher,
        shards=s.redis_shards,
    )
    # Guarded adapters implement their port; outages become DependencyUnavailable.
    near = GuardedNearTermStore(near_store, breakers["redis"])
    far_store = ClickHouseLongTermStore(clickhouse, cipher, clock)
    far = GuardedLongTermStore(far_store, breakers["clickhouse"])
    lifecycle_store = ClickHouseLifecycleStore(clickhouse, cipher)
    lifecycle = LifecycleService(
        # reads answer 503 while ClickHouse is down; writes wait in the recorder's buffer
        GuardedLifecycleStore(lifecycle_store, breakers["clickhouse"]),
        LifecycleRecorder(
            lifecycle_store,
            batch_size=s.analytics_batch_size,
            flush_interval=s.analytics_flush_interval,
        ),
    )
    sync = SyncService(
        near,
        far,
        RedisLease(redis, f"{control_tag(s.redis_key_prefix)}:sync-lock", ttl=60),
        clock,
        transfer_horizon_seconds=s.transfer_horizon_seconds,
        retention_days=s.execution_history_ttl_days,
        on_run=metrics.sync_run,
        on_moved=lambda events: lifecycle.moved(events, clock.now(), s.node_id),
    )
    service = SchedulerService(
        near,
        clock,
        immediate_horizon_seconds=s.immediate_horizon_seconds,
        max_body_bytes=s.max_body_bytes,
        rules=s.event_rules(),
        default_max_delay_seconds=s.default_max_delay_seconds,
        far=far,
        sync=sync,
        on_scheduled=lambda tier, source, n: metrics.scheduled(tier.value, source, n),
        lifecycle=lifecycle,
    )
    analytics_store = ClickHouseAnalyticsStore(clickhouse)
    recorder = AnalyticsRecorder(
        analytics_store,
        batch_size=s.analytics_batch_size,
        flush_interval=s.analytics_flush_interval,
        enabled=s.analytics_enabled,
    )
    tiers: dict[str, RekeyableTier] = {"redis": near, "clickhouse": far}
    audit = build_audit(clickhouse, breakers["clickhouse"], s, clock)
    rotation = audited_rotation = None
    if cipher is not None:
        audited_rotation = AuditedRotation(audit)
        rotation = KeyRotation(tiers, cipher.ring.current, on_step=audited_rotation.step)
        audited_rotation.attach(rotation)
    return Wired(
        redis=redis,
        clickhouse=clickhouse,
        near=near,
        far=far,
        lifecycle=lifecycle,
        sync=sync,
        service=service,
        analytics=ScheduleAnalyticsService(
            analytics_store, recorder=recorder, enabled=s.analytics_enabled
        ),
        analytics_recorder=recorder,
        rotation=rotation,
        audit=audit,
        audited_rotation=audited_rotation,
    )

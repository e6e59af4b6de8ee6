"""The Python API, used as the README's examples show, on real servers."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from delayline.adapters.embedded import EmbeddedTansu, EmbeddedValkey, free_port
from delayline.services.analytics_service import ScheduleAnalyticsService
from delayline.services.scheduler_service import scheduler_service
from delayline.settings import load_settings
from tests.support import TopicReader


# The examples use naive UTC datetimes from utcnow(), which Python 3.12+ deprecates: they must
# keep working, so the warning is expected here.
@pytest.mark.filterwarnings("ignore:datetime.datetime.utcnow:DeprecationWarning")
async def test_the_spec_examples(
    valkey: EmbeddedValkey,
    broker: EmbeddedTansu,
    clickhouse_dsn: str,
    clickhouse_root: object,  # the session's engine: this service shares its folder
    unique: str,
    tmp_path: Path,
) -> None:
    settings = load_settings(
        redis_url=valkey.url,
        redis_key_prefix=f"spec-{unique}",
        kafka_bootstrap_servers=broker.bootstrap_servers,
        clickhouse_dsn=clickhouse_dsn,
        clickhouse_database=f"spec_{unique}",
        data_dir=tmp_path,
        api_port=free_port(),
        analytics_flush_interval=0.2,
    )
    topic = f"user.notifications.{unique}"
    reader = TopicReader(broker.bootstrap_servers, topic)
    # Initialize
    await scheduler_service.start(settings)
    try:
        # Schedule immediate event (Redis)
        soon_id = await scheduler_service.schedule_event(
            topic=topic,
            entity_type="user",
            action="send_reminder",
            body='{"user_id": 123, "message": "Don\'t forget!"}',
            scheduled_at=datetime.utcnow() + timedelta(seconds=6),
            correlation_id="reminder-123",
            headers={"priority": "high"},
            priority=1,
        )
        # Schedule long-term event (ClickHouse)
        later_id = await scheduler_service.schedule_event(
            topic="user.subscription",
            entity_type="subscription",
            action="renewal_reminder",
            body='{"subscription_id": 456}',
            scheduled_at=datetime.utcnow() + timedelta(days=30),
            correlation_id="renewal-456",
            priority=0,
        )
        stats = await scheduler_service.get_stats()
        assert stats["pending"] == 2, stats
        assert stats["redis_pending"] == 1
        assert stats["clickhouse_pending"] == 1
        # Cancel event
        assert await scheduler_service.cancel_event(later_id) is True

        [msg] = await asyncio.to_thread(reader.read, 1, 20)
        assert msg.header("x-schedule-id") == soon_id
        assert msg.key == b"reminder-123"

        assert await scheduler_service.sync_clickhouse_to_redis() == 0
        assert await scheduler_service.cleanup_old_schedules() == 0

        analytics = ScheduleAnalyticsService()
        await analytics.initialize()
        metrics: list[dict[str, object]] = []
        for _ in range(50):  # results are written in batches, off the firing path
            metrics = await analytics.get_performance_metrics(
                start_date=datetime.utcnow() - timedelta(days=7),
                end_date=datetime.utcnow() + timedelta(hours=1),
                entity_type="user",
            )
            if metrics:
                break
            await asyncio.sleep(0.1)
        assert len(metrics) == 1
        assert metrics[0]["total_executions"] == 1
        assert metrics[0]["successful_executions"] == 1
        assert metrics[0]["action"] == "send_reminder"
        await analytics.close()
    finally:
        await scheduler_service.stop()
        reader.close()

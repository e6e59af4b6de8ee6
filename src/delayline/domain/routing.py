"""Which tier holds an event: a pure function of the event's due time, now and the horizon."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from delayline.domain.events import to_epoch_us


class Tier(StrEnum):
    """The two stores an event can wait in."""

    REDIS = "redis"  # due within the immediate horizon: fired from here
    CLICKHOUSE = "clickhouse"  # due later: moved into Redis by the sync


def route(scheduled_at: datetime, now: datetime, immediate_horizon_seconds: float) -> Tier:
    """Redis for events due within ``immediate_horizon_seconds`` of ``now`` (inclusive)."""
    delay_us = to_epoch_us(scheduled_at) - to_epoch_us(now)
    if delay_us <= immediate_horizon_seconds * 1_000_000:
        return Tier.REDIS
    return Tier.CLICKHOUSE

"""The pending gauge's ClickHouse count backs off when counting gets expensive."""

from __future__ import annotations

from delayline.gauges import GAUGE_INTERVAL_SECONDS, far_count_interval


def test_a_cheap_count_runs_every_gauge_refresh() -> None:
    assert far_count_interval(0.01) == GAUGE_INTERVAL_SECONDS


def test_an_expensive_count_holds_the_query_thread_at_most_five_percent() -> None:
    for took in (0.5, 1.3, 7.0):
        interval = far_count_interval(took)
        assert interval > GAUGE_INTERVAL_SECONDS
        assert took / interval <= 0.05

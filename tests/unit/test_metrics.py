"""The Metrics object: names, labels, bounded cardinality, exposition format."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from delayline.domain.outcomes import Outcome
from delayline.domain.routing import Tier
from delayline.metrics import CONTENT_TYPE, LATENESS_BUCKETS, Metrics


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    assert value is not None, (name, labels)
    return value


def test_each_instance_has_its_own_registry() -> None:
    one, two = Metrics(), Metrics()
    one.auth_failed("invalid")
    assert _value(one, "delayline_auth_failures_total", reason="invalid") == 1
    assert (
        two.registry.get_sample_value("delayline_auth_failures_total", {"reason": "invalid"})
        is None
    )
    shared = CollectorRegistry()
    assert Metrics(shared).registry is shared


def test_every_name_has_the_prefix_and_a_unit() -> None:
    families = list(text_string_to_metric_families(Metrics().render().decode()))
    names = {f.name for f in families}
    expected = {
        "delayline_events_scheduled",
        "delayline_events_fired",
        "delayline_firing_lateness_seconds",
        "delayline_pending_events",
        "delayline_claims_in_flight",
        "delayline_sync_runs",
        "delayline_sync_duration_seconds",
        "delayline_sync_moved_events",
        "delayline_consumer_lag_messages",
        "delayline_dead_lettered_messages",
        "delayline_circuit_breaker_state",
        "delayline_http_requests",
        "delayline_http_request_duration_seconds",
        "delayline_auth_failures",
    }
    assert expected <= names
    assert all(n.startswith("delayline_") for n in names)
    for family in families:
        if family.type == "counter":  # exposed with the _total suffix
            assert {s.name for s in family.samples} <= {
                f"{family.name}_total",
                f"{family.name}_created",
            }


def test_series_exist_before_any_traffic() -> None:
    m = Metrics()
    for tier in ("redis", "clickhouse"):
        assert _value(m, "delayline_pending_events", tier=tier) == 0
        for source in ("api", "http", "kafka", "sync"):
            assert _value(m, "delayline_events_scheduled_total", tier=tier, source=source) == 0
    for outcome in ("success", "error", "timeout", "skipped"):
        assert _value(m, "delayline_events_fired_total", outcome=outcome) == 0


def test_scheduled_accepts_enums_and_bounds_labels() -> None:
    m = Metrics()
    m.scheduled(Tier.CLICKHOUSE, "kafka", 3)
    m.scheduled("redis", "carrier-pigeon")
    m.scheduled("memory", "api")
    m.scheduled("redis", "api", 0)
    assert _value(m, "delayline_events_scheduled_total", tier="clickhouse", source="kafka") == 3
    assert _value(m, "delayline_events_scheduled_total", tier="redis", source="other") == 1
    assert _value(m, "delayline_events_scheduled_total", tier="other", source="api") == 1
    assert _value(m, "delayline_events_scheduled_total", tier="redis", source="api") == 0


def test_fired_observes_lateness_of_published_events_only() -> None:
    m = Metrics()
    m.fired(Outcome.SUCCESS, 0.0004)
    m.fired("success", 0.004)
    m.fired("success", -0.2)  # clock skew: observed as 0
    m.fired("skipped", 120.0)
    m.fired("error")
    m.fired("exploded")
    assert _value(m, "delayline_events_fired_total", outcome="success") == 3
    assert _value(m, "delayline_events_fired_total", outcome="skipped") == 1
    assert _value(m, "delayline_events_fired_total", outcome="error") == 1
    assert _value(m, "delayline_events_fired_total", outcome="other") == 1
    assert _value(m, "delayline_firing_lateness_seconds_count") == 3
    assert _value(m, "delayline_firing_lateness_seconds_bucket", le="0.0005") == 2
    assert _value(m, "delayline_firing_lateness_seconds_bucket", le="0.005") == 3
    assert _value(m, "delayline_firing_lateness_seconds_sum") == pytest.approx(0.0044)


def test_lateness_buckets_span_half_a_millisecond_to_a_minute() -> None:
    assert LATENESS_BUCKETS[0] == 0.0005
    assert LATENESS_BUCKETS[-1] == 60.0
    assert list(LATENESS_BUCKETS) == sorted(set(LATENESS_BUCKETS))
    assert sum(b <= 0.01 for b in LATENESS_BUCKETS) >= 6  # fine where the dispatcher lives


def test_gauges_and_sync() -> None:
    m = Metrics()
    m.set_pending("redis", 42)
    m.set_claims_in_flight(7)
    m.set_consumer_lag(7)
    m.sync_run("success", 0.3, moved=5)
    m.sync_run("error", 1.5)
    assert _value(m, "delayline_pending_events", tier="redis") == 42
    assert _value(m, "delayline_claims_in_flight") == 7
    assert _value(m, "delayline_consumer_lag_messages") == 7
    assert _value(m, "delayline_sync_runs_total", result="success") == 1
    assert _value(m, "delayline_sync_runs_total", result="error") == 1
    assert _value(m, "delayline_sync_duration_seconds_count") == 2
    assert _value(m, "delayline_sync_moved_events_total") == 5


def test_breaker_states() -> None:
    m = Metrics()
    for state, value in (("closed", 0), ("half-open", 1), ("open", 2), ("HALF_OPEN", 1)):
        m.set_breaker_state("redis", state)
        assert _value(m, "delayline_circuit_breaker_state", dependency="redis") == value
    with pytest.raises(ValueError, match="unknown circuit breaker state 'melted'"):
        m.set_breaker_state("redis", "melted")


def test_dead_letters_and_http() -> None:
    m = Metrics()
    m.dead_lettered("invalid_json")
    m.dead_lettered("invalid_json")
    m.http_request("/api/v1/schedules", "post", 201, 0.01)
    m.http_request("/api/v1/schedules", "TRACE-ME", 405, 0.001)
    assert _value(m, "delayline_dead_lettered_messages_total", reason="invalid_json") == 2
    labels = {"route": "/api/v1/schedules", "method": "POST", "status": "201"}
    assert _value(m, "delayline_http_requests_total", **labels) == 1
    labels = {"route": "/api/v1/schedules", "method": "other", "status": "405"}
    assert _value(m, "delayline_http_requests_total", **labels) == 1
    count = "delayline_http_request_duration_seconds_count"
    assert _value(m, count, route="/api/v1/schedules") == 2


def test_render_is_the_0_0_4_text_format() -> None:
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    text = Metrics().render().decode()
    assert "# TYPE delayline_firing_lateness_seconds histogram" in text
    assert 'delayline_firing_lateness_seconds_bucket{le="+Inf"} 0.0' in text

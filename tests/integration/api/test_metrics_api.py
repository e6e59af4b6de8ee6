"""The metrics endpoint, parsed after known traffic."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from .conftest import Api

MON = "/api/v1/schedules/monitoring"
SCHEDULES = "/api/v1/schedules"


def _samples(api: Api) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    resp = api.client.get(f"{MON}/metrics")
    assert resp.status_code == 200
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def _requests(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float],
    route: str,
    method: str,
    status: int,
) -> float:
    key = frozenset({"route": route, "method": method, "status": str(status)}.items())
    return samples.get(("delayline_http_requests_total", key), 0.0)


def test_http_requests_are_counted_by_route_template(api: Api) -> None:
    for i in range(3):
        created = api.client.post(
            SCHEDULES, json={"topic": "t", "delay_seconds": 60, "schedule_id": f"m{i}"}
        )
        assert created.status_code == 201
    assert api.client.post(SCHEDULES, json={"topic": "."}).status_code == 422
    for i in range(3):
        assert api.client.get(f"{SCHEDULES}/m{i}").status_code == 200
    assert api.client.get(f"{SCHEDULES}/missing").status_code == 404
    assert api.client.delete(f"{SCHEDULES}/m0").status_code == 200
    assert api.client.get("/no/such/path").status_code == 404
    assert api.client.request("BREW", SCHEDULES).status_code == 405

    samples = _samples(api)
    by_id = f"{SCHEDULES}/{{schedule_id}}"
    assert _requests(samples, SCHEDULES, "POST", 201) == 3
    assert _requests(samples, SCHEDULES, "POST", 422) == 1
    assert _requests(samples, by_id, "GET", 200) == 3
    assert _requests(samples, by_id, "GET", 404) == 1
    assert _requests(samples, by_id, "DELETE", 200) == 1
    assert _requests(samples, "unmatched", "GET", 404) == 1
    assert _requests(samples, SCHEDULES, "other", 405) == 1  # unknown methods are one label
    # Raw paths never become labels.
    assert not any("m0" in dict(labels).get("route", "") for _, labels in samples)
    # The scrape itself is counted once the response is sent: not in its own output.
    assert _requests(samples, f"{MON}/metrics", "GET", 200) == 0
    assert _requests(_samples(api), f"{MON}/metrics", "GET", 200) == 1

    duration = ("delayline_http_request_duration_seconds_count", frozenset({("route", by_id)}))
    assert samples[duration] == 5


def test_service_metrics_recorded_elsewhere_are_exposed(api: Api) -> None:
    api.metrics.scheduled("redis", "http", 4)
    api.metrics.fired("success", 0.004)
    api.metrics.fired("skipped")
    api.metrics.set_pending("clickhouse", 12)
    api.metrics.set_breaker_state("clickhouse", "open")
    api.metrics.sync_run("success", 0.2, moved=7)
    samples = _samples(api)
    assert (
        samples[
            (
                "delayline_events_scheduled_total",
                frozenset({("tier", "redis"), ("source", "http")}),
            )
        ]
        == 4
    )
    assert samples[("delayline_events_fired_total", frozenset({("outcome", "skipped")}))] == 1
    assert samples[("delayline_firing_lateness_seconds_count", frozenset())] == 1
    assert samples[("delayline_firing_lateness_seconds_bucket", frozenset({("le", "0.005")}))] == 1
    assert samples[("delayline_firing_lateness_seconds_bucket", frozenset({("le", "0.003")}))] == 0
    assert samples[("delayline_pending_events", frozenset({("tier", "clickhouse")}))] == 12
    assert (
        samples[("delayline_circuit_breaker_state", frozenset({("dependency", "clickhouse")}))] == 2
    )
    assert samples[("delayline_sync_moved_events_total", frozenset())] == 7

"""The monitoring endpoints against a real uvicorn server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from delayline.domain.events import utc_now

from .conftest import Api, ApiFactory

MON = "/api/v1/schedules/monitoring"


def test_health_is_200_when_serving_503_when_not(api: Api) -> None:
    resp = api.client.get(f"{MON}/health")
    assert resp.status_code == 200
    assert resp.json()["serving"] is True
    assert resp.json()["dependencies"]["redis"]["state"] == "up"

    api.health.report = {
        "serving": False,
        "dependencies": {"redis": {"state": "down", "breaker": "open"}},
    }
    down = api.client.get(f"{MON}/health")
    assert down.status_code == 503
    assert down.json()["dependencies"]["redis"] == {"state": "down", "breaker": "open"}


def test_health_that_raises_is_503(api: Api) -> None:
    api.health.error = TimeoutError("probe timed out")
    resp = api.client.get(f"{MON}/health")
    assert resp.status_code == 503
    assert resp.json()["serving"] is False


def test_stats_reports_the_store(api: Api) -> None:
    for i in range(3):
        api.client.post("/api/v1/schedules", json={"topic": "t", "delay_seconds": 60 + i})
    resp = api.client.get(f"{MON}/stats")
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["pending"] == 3
    assert doc["redis_pending"] == 3
    assert doc["sync_lag_seconds"] is None  # NaN is not JSON: sent as null


def test_sync_and_cleanup_run_the_service(api: Api) -> None:
    assert api.client.post(f"{MON}/sync").json() == {"moved": 0}
    assert api.client.post(f"{MON}/cleanup").json() == {"removed": 0}
    assert (api.service.syncs, api.service.cleanups) == (1, 1)
    # GET falls through to GET /{schedule_id}: ids may contain "/", and none is "monitoring/sync"
    assert api.client.get(f"{MON}/sync").status_code == 404


def test_performance_passes_validated_parameters(api: Api) -> None:
    assert api.analytics is not None
    api.analytics.rows = [{"date": "2030-01-01", "hour": 3, "p99_delay_seconds": float("nan")}]
    resp = api.client.get(
        f"{MON}/analytics/performance",
        params={
            "start_date": "2030-01-01T00:00:00+02:00",
            "end_date": "2030-01-02T00:00:00",
            "entity_type": "user",
            "action": "send_reminder",
            "topic": "user.notifications",
            "granularity": "day",
        },
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == [{"date": "2030-01-01", "hour": 3, "p99_delay_seconds": None}]
    name, args = api.analytics.calls[-1]
    assert name == "performance"
    assert args == {
        "start_date": datetime(2029, 12, 31, 22, tzinfo=UTC),
        "end_date": datetime(2030, 1, 2, tzinfo=UTC),
        "entity_type": "user",
        "action": "send_reminder",
        "topic": "user.notifications",
        "granularity": "day",
        "tenant": None,
    }


def test_performance_defaults_to_the_last_day_by_hour(api: Api) -> None:
    assert api.analytics is not None
    before = utc_now()
    assert api.client.get(f"{MON}/analytics/performance").status_code == 200
    _, args = api.analytics.calls[-1]
    assert args["granularity"] == "hour"
    assert args["end_date"] - args["start_date"] == timedelta(days=1)
    assert before <= args["end_date"] <= utc_now()
    assert args["entity_type"] is None


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"granularity": "minute"}, "granularity", "'hour' or 'day'"),
        ({"start_date": "yesterday"}, "start_date", "datetime"),
        ({"end_date": "2030-13-01T00:00:00"}, "end_date", "datetime"),
        (
            {"start_date": "2030-01-02T00:00:00Z", "end_date": "2030-01-01T00:00:00Z"},
            "start_date",
            "before end_date",
        ),
        (
            {"start_date": "2020-01-01T00:00:00Z", "end_date": "2030-01-01T00:00:00Z"},
            "start_date",
            "limited to 400 days",
        ),
        ({"end_date": "0001-01-01T00:00:00+05:00"}, "end_date", "out of range"),
        ({"entity_type": "x" * 2000}, "entity_type", "at most 1024"),
        ({"entity": "user"}, "entity", "unknown query parameter 'entity'"),
    ],
)
def test_performance_rejects_bad_parameters(
    api: Api, params: dict[str, str], field: str, words: str
) -> None:
    resp = api.client.get(f"{MON}/analytics/performance", params=params)
    assert resp.status_code == 422, resp.text
    assert resp.json()["field"] == field
    assert words in resp.json()["error"]


def test_summary(api: Api) -> None:
    assert api.analytics is not None
    resp = api.client.get(
        f"{MON}/analytics/summary",
        params={"start_date": "2030-01-01T00:00:00Z", "end_date": "2030-01-08T00:00:00Z"},
    )
    assert resp.status_code == 200
    assert resp.json() == {"total_executions": 0, "success_rate": None}
    assert api.analytics.calls[-1] == (
        "summary",
        {
            "start_date": datetime(2030, 1, 1, tzinfo=UTC),
            "end_date": datetime(2030, 1, 8, tzinfo=UTC),
            "tenant": None,
        },
    )
    bad = api.client.get(f"{MON}/analytics/summary", params={"topic": "t"})
    assert bad.status_code == 422


def test_analytics_disabled_is_404_with_a_message(make_api: ApiFactory) -> None:
    api = make_api(analytics=False)
    for path in ("analytics/summary", "analytics/performance"):
        resp = api.client.get(f"{MON}/{path}")
        assert resp.status_code == 404
        assert "analytics is disabled" in resp.json()["error"]


def test_metrics_content_type(api: Api) -> None:
    resp = api.client.get(f"{MON}/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "# TYPE delayline_events_scheduled_total counter" in resp.text

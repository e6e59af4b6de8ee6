"""Settings: defaults, and errors that name the variable without echoing secrets."""

from __future__ import annotations

import pytest

from delayline.settings import SettingsError, load_settings


def test_settings_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEDULES_IMMEDIATE_HORIZON_SECONDS", "-5")
    with pytest.raises(SettingsError, match="SCHEDULES_IMMEDIATE_HORIZON_SECONDS"):
        load_settings()


def test_transfer_horizon_must_exceed_sync_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("schedules_TRANSFER_HORIZON_SECONDS", "200")
    with pytest.raises(SettingsError, match="would fire late"):
        load_settings()


def test_secret_settings_are_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEDULES_API_KEYS", "not-json-secret")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "not-json-secret" not in str(info.value)
    assert "SCHEDULES_API_KEYS" in str(info.value)


def test_defaults_are_the_documented_ones() -> None:
    settings = load_settings()
    assert settings.immediate_horizon_seconds == 86400
    assert settings.transfer_horizon_seconds == 3600
    assert settings.clickhouse_sync_interval == 300
    assert settings.redis_processing_interval == 5
    assert settings.execution_history_ttl_days == 90
    assert settings.analytics_enabled is True
    assert settings.analytics_batch_size == 1000

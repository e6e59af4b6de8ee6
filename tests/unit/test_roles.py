"""The roles setting: a comma list of known roles, ``all`` for every one."""

from __future__ import annotations

import pytest

from delayline.roles import ALL_ROLES, parse_roles
from delayline.settings import SettingsError, load_settings


def test_a_comma_list_names_the_roles() -> None:
    assert parse_roles("fire, sync") == {"fire", "sync"}
    assert parse_roles(["API", "ingest"]) == {"api", "ingest"}


def test_all_means_every_role_and_is_the_default() -> None:
    assert parse_roles("all") == ALL_ROLES
    assert load_settings().roles == ALL_ROLES


@pytest.mark.parametrize("bad", ["", " , ", "fire,fly"])
def test_an_unknown_or_empty_role_list_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="role"):
        parse_roles(bad)


def test_the_environment_sets_the_roles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEDULES_ROLES", "schedule,api")
    assert load_settings().roles == {"schedule", "api"}
    monkeypatch.setenv("SCHEDULES_ROLES", "dispatch")
    with pytest.raises(SettingsError, match=r"SCHEDULES_ROLES: .*unknown role"):
        load_settings()

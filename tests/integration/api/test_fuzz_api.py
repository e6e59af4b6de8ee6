"""Schema fuzzing: schemathesis generates requests from the served OpenAPI document, valid ones
and invalid ones, against the running server. No request may get a 5xx, and every 4xx must be
a JSON body saying what is wrong."""

from __future__ import annotations

import collections
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode

from delayline.api.keys import ApiKeyEntry

from .conftest import Api, ApiFactory

KEY = "fuzz-key-0123456789"
MAX_EXAMPLES = 300  # ~10 s per run on an idle 2-core machine


def _fuzz(api: Api, mode: GenerationMode, headers: dict[str, str] | None = None) -> list[int]:
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    seen: list[int] = []
    session = requests.Session()

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,  # no .hypothesis folder; failures print their reproduction
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=schema.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(base_url=api.url, session=session, headers=headers, timeout=30)
        seen.append(response.status_code)
        curl = case.as_curl_command()
        assert response.status_code < 500, f"{response.status_code} {response.text}\n{curl}"
        if response.status_code >= 400:
            body = response.json()
            assert isinstance(body, dict) and body.get("error"), f"{body}\n{curl}"

    try:
        run()
    finally:
        session.close()
    return seen


def test_fuzzing_valid_requests_finds_no_server_error(make_api: ApiFactory) -> None:
    api = make_api(real_service=True)  # the real SchedulerService over the real Redis store
    statuses = collections.Counter(_fuzz(api, GenerationMode.POSITIVE))
    assert statuses.total() >= MAX_EXAMPLES // 2
    assert statuses[201] > 0, statuses  # the fuzzing reached the stores, not only validation


def test_fuzzing_invalid_requests_finds_no_server_error(api: Api) -> None:
    statuses = collections.Counter(_fuzz(api, GenerationMode.NEGATIVE))
    assert statuses.total() >= MAX_EXAMPLES // 2
    assert sum(n for code, n in statuses.items() if 400 <= code < 500) > 0, statuses


def test_fuzzing_with_auth_finds_no_server_error(make_api: ApiFactory) -> None:
    api = make_api(api_keys=[ApiKeyEntry.for_key(KEY, id="fuzz")])
    statuses = collections.Counter(_fuzz(api, GenerationMode.POSITIVE, {"X-API-Key": KEY}))
    assert statuses.total() >= MAX_EXAMPLES // 2
    assert statuses[401] == 0, statuses

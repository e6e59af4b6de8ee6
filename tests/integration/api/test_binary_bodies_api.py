"""Binary bodies over HTTP (real uvicorn, real Valkey): base64 in, exact bytes stored, base64 out
with its indicator, clear 422s, and the OpenAPI schema saying so. Firing them is covered end to
end in tests/integration/test_binary_bodies.py."""

from __future__ import annotations

import base64

import httpx
import orjson

from delayline.adapters.redis_store import RedisNearTermStore

from .conftest import Api, ApiFactory

URL = "/api/v1/schedules"
BINARY = b"\x00\x02\xff\xfe\x80\xc3\x28\xed\xa0\x80\n{not json}\xff"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_a_base64_body_is_stored_as_its_bytes_and_shown_as_base64(
    make_api: ApiFactory, store: RedisNearTermStore
) -> None:
    api = make_api(real_service=True)
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
        doc = {"topic": "t", "delay_seconds": 600, "body_encoding": "base64"}
        resp = await http.post(URL, json={**doc, "body": _b64(BINARY), "schedule_id": "bin"})
        assert resp.status_code == 201, resp.text
        stored = await store.get("bin")
        assert stored is not None and stored.body == BINARY
        shown = (await http.get(f"{URL}/bin")).json()
        assert (shown["body_encoding"], shown["body"]) == ("base64", _b64(BINARY))

        # Base64 of UTF-8 text is just text: it is shown as such.
        text = "héllo".encode()
        resp = await http.post(URL, json={**doc, "body": _b64(text), "schedule_id": "txt"})
        assert resp.status_code == 201, resp.text
        shown = (await http.get(f"{URL}/txt")).json()
        assert (shown["body_encoding"], shown["body"]) == ("utf-8", "héllo")

        # A batch mixes both encodings; each item says its own.
        batch = {
            "events": [
                {**doc, "body": _b64(b"\xff"), "schedule_id": "b1"},
                {"topic": "t", "delay_seconds": 600, "body": {"a": 1}, "schedule_id": "b2"},
            ]
        }
        resp = await http.post(URL, json=batch)
        assert resp.status_code == 201, resp.text
        bodies = [getattr(await store.get(sid), "body", None) for sid in ("b1", "b2")]
        assert bodies == [b"\xff", b'{"a":1}']


def test_bad_base64_is_a_422_naming_the_body(api: Api) -> None:
    doc = {"topic": "t", "delay_seconds": 1, "body_encoding": "base64"}
    for body, words in (
        ("@@@@", "not valid base64"),
        ({"a": 1}, "must be a base64 string"),
    ):
        resp = api.client.post(URL, json={**doc, "body": body})
        assert resp.status_code == 422, resp.text
        assert resp.json()["field"] == "body"
        assert words in resp.json()["error"]
    batch = {"events": [{"topic": "t", "delay_seconds": 1}, {**doc, "body": "a"}]}
    resp = api.client.post(URL, json=batch)
    assert resp.status_code == 422, resp.text
    assert resp.json()["field"] == "events.1.body"


def test_the_body_over_the_limit_counts_decoded_bytes(make_api: ApiFactory) -> None:
    api = make_api(max_body_bytes=10, real_service=True)
    doc = {"topic": "t", "delay_seconds": 1, "body_encoding": "base64"}
    assert api.client.post(URL, json={**doc, "body": _b64(b"\xff" * 10)}).status_code == 201
    over = api.client.post(URL, json={**doc, "body": _b64(b"\xff" * 11)})
    assert over.status_code == 422
    assert over.json()["field"] == "body"


def test_openapi_states_the_body_encoding(api: Api) -> None:
    schemas = orjson.loads(api.client.get("/openapi.json").content)["components"]["schemas"]
    for model in ("EventIn", "EventOut"):
        encoding = schemas[model]["properties"]["body_encoding"]
        assert encoding["enum"] == ["utf-8", "base64"], model
        assert "base64" in encoding["description"], model
    assert "base64" in schemas["EventIn"]["properties"]["body"]["description"]
    assert "body_encoding" in schemas["EventOut"]["required"]

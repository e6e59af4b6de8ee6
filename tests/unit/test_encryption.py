"""Unit tests of the key ring, the sealed payload format and the codec's sealing hook."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from delayline.adapters.encryption import (
    KeyRing,
    KeyRingError,
    PayloadCipher,
    UnreadableEvents,
    parse_key_ring,
    sealed_key_id,
)
from delayline.domain.codec import (
    UndecryptablePayload,
    decode_event,
    encode_event,
    is_sealed,
    reseal,
    sealed_part,
    with_due,
)
from delayline.domain.events import ScheduledEvent
from delayline.settings import SettingsError, load_settings

K1, K2, KT = os.urandom(32), os.urandom(32), os.urandom(32)


def ring_json(current: str = "k1", **keys: bytes) -> str:
    encoded = {k: base64.b64encode(v).decode() for k, v in (keys or {"k1": K1}).items()}
    return orjson.dumps({"current": current, "keys": encoded}).decode()


def cipher(
    current: str = "k1", tenants: dict[str, str] | None = None, **keys: bytes
) -> PayloadCipher:
    return PayloadCipher(KeyRing(keys=keys or {"k1": K1}, current=current, tenants=tenants or {}))


def event(schedule_id: str = "ev-1", entity_type: str = "order") -> ScheduledEvent:
    due = datetime(2030, 1, 1, tzinfo=UTC)
    return ScheduledEvent(
        schedule_id=schedule_id,
        topic="out",
        entity_type=entity_type,
        action="remind",
        body=b'{"secret": "card 4111"}\x00\xff',
        correlation_id="c-1",
        headers={"x-tenant": "acme-secret-header"},
        scheduled_at=due,
        created_at=due - timedelta(hours=1),
        updated_at=due - timedelta(hours=1),
    )


def test_seal_then_open_round_trips_headers_and_body() -> None:
    c = cipher()
    sealed = c.seal("ev-1", "order", {"a": "b"}, b"body\nwith newline")
    assert sealed_key_id(sealed) == "k1"
    assert b"body" not in sealed
    assert c.open("ev-1", sealed) == ({"a": "b"}, b"body\nwith newline")
    assert c.open("ev-1", c.seal("ev-1", "", {}, b"")) == ({}, b"")


def test_each_seal_uses_a_fresh_nonce() -> None:
    c = cipher()
    assert c.seal("ev-1", "", {}, b"same") != c.seal("ev-1", "", {}, b"same")


def test_tampered_ciphertext_is_an_error_naming_the_key_id() -> None:
    c = cipher()
    sealed = bytearray(c.seal("ev-1", "", {}, b"payload"))
    sealed[-1] ^= 1
    with pytest.raises(UndecryptablePayload, match="key k1 does not open it") as info:
        c.open("ev-1", bytes(sealed))
    assert info.value.key_id == "k1"


def test_a_payload_moved_to_another_event_does_not_open() -> None:
    c = cipher()
    sealed = c.seal("ev-1", "", {}, b"payload")
    with pytest.raises(UndecryptablePayload, match="key k1"):
        c.open("ev-2", sealed)


def test_a_changed_key_id_in_the_header_does_not_open() -> None:
    c = cipher("k1", k1=K1, k2=K1)  # same key under two ids: the id is authenticated too
    sealed = c.seal("ev-1", "", {}, b"payload")
    forged = sealed[:3] + b"k2" + sealed[5:]
    with pytest.raises(UndecryptablePayload, match="key k2 does not open it"):
        c.open("ev-1", forged)


def test_a_missing_key_is_an_error_naming_it() -> None:
    sealed = cipher("k1", k1=K1).seal("ev-1", "", {}, b"payload")
    with pytest.raises(UndecryptablePayload, match=r"^undecryptable: key k1 missing$") as info:
        cipher("k2", k2=K2).open("ev-1", sealed)
    assert info.value.key_id == "k1"


def test_a_wrong_key_under_the_same_id_is_an_error_naming_it() -> None:
    sealed = cipher("k1", k1=K1).seal("ev-1", "", {}, b"payload")
    with pytest.raises(UndecryptablePayload, match="key k1 does not open it"):
        cipher("k1", k1=K2).open("ev-1", sealed)


@pytest.mark.parametrize("raw", [b"", b"\xdc", b"{}", b"\xdc\x01\x02k1" + b"\x00" * 5])
def test_garbage_is_not_a_sealed_payload(raw: bytes) -> None:
    with pytest.raises(UndecryptablePayload, match="undecryptable"):
        cipher().open("ev-1", raw)


def test_rotation_new_payloads_use_the_current_key_old_ones_still_open() -> None:
    old = cipher("k1", k1=K1)
    sealed_old = old.seal("ev-1", "", {}, b"old")
    rotated = cipher("k2", k1=K1, k2=K2)
    sealed_new = rotated.seal("ev-2", "", {}, b"new")
    assert sealed_key_id(sealed_new) == "k2"
    assert rotated.open("ev-1", sealed_old) == ({}, b"old")
    assert rotated.needs_rekey(sealed_old, "")
    assert not rotated.needs_rekey(sealed_new, "")


def test_tenant_keys_seal_their_entity_type_and_shred_when_removed() -> None:
    ring = cipher("k1", tenants={"acme": "t-acme"}, k1=K1, **{"t-acme": KT})
    acme = ring.seal("ev-1", "acme", {}, b"acme data")
    other = ring.seal("ev-2", "globex", {}, b"globex data")
    assert sealed_key_id(acme) == "t-acme"
    assert sealed_key_id(other) == "k1"
    shredded = cipher("k1", k1=K1)
    with pytest.raises(UndecryptablePayload, match="key t-acme missing"):
        shredded.open("ev-1", acme)
    assert shredded.open("ev-2", other) == ({}, b"globex data")


def test_codec_seals_headers_and_body_and_round_trips() -> None:
    c = cipher()
    e = event()
    raw = encode_event(e, c)
    assert is_sealed(raw)
    assert b"card 4111" not in raw
    assert b"acme-secret-header" not in raw
    assert decode_event(raw, e.schedule_id, sealer=c) == e
    assert not is_sealed(encode_event(e))


def test_codec_refuses_a_sealed_payload_without_a_ring_or_under_another_id() -> None:
    raw = encode_event(event(), cipher())
    with pytest.raises(UndecryptablePayload, match="no key ring"):
        decode_event(raw, "ev-1")
    with pytest.raises(UndecryptablePayload, match="key k1"):
        decode_event(raw, "ev-other", sealer=cipher())


def test_parse_key_ring_from_json_and_from_a_file(tmp_path: Path) -> None:
    text = ring_json("k2", k1=K1, k2=K2)
    ring = parse_key_ring(text)
    assert ring.current == "k2"
    assert dict(ring.keys) == {"k1": K1, "k2": K2}
    path = tmp_path / "ring.json"
    path.write_text(text)
    assert parse_key_ring(str(path)) == ring
    assert "K1" not in repr(ring) and base64.b64encode(K1).decode() not in repr(ring)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{not json", "JSON object"),
        ('{"current": "k1"}', "must look like"),
        ('{"keys": {"k1": "AAAA"}}', "current"),
        ('{"current": "k1", "keys": {"k1": "!!"}}', "key k1 is not valid base64"),
        ('{"current": "k1", "keys": {"k1": "AAAA"}}', "key k1 must be 32 bytes, not 3"),
        ("/no/such/ring.json", "cannot read the key file"),
    ],
)
def test_bad_key_rings_are_named(value: str, message: str) -> None:
    with pytest.raises(KeyRingError, match=message):
        parse_key_ring(value)


def test_settings_name_a_bad_ring_without_echoing_it() -> None:
    bad = ring_json("k9", k1=K1)
    with pytest.raises(SettingsError, match="SCHEDULES_ENCRYPTION_KEYS") as info:
        load_settings(encryption_keys=bad)
    assert "k9" in str(info.value)
    assert base64.b64encode(K1).decode() not in str(info.value)
    with pytest.raises(SettingsError, match="tenant 'acme' names key 'gone'"):
        load_settings(encryption_keys=ring_json(), encryption_tenant_keys={"acme": "gone"})
    ring = load_settings(encryption_keys=ring_json()).key_ring()
    assert ring is not None and ring.current == "k1"
    assert load_settings().key_ring() is None


def test_reseal_moves_a_payload_to_the_current_key_and_seals_one_in_clear() -> None:
    e = event()
    old = encode_event(e, cipher("k1", k1=K1))
    rotated = cipher("k2", k1=K1, k2=K2)
    entity, sealed = sealed_part(old)
    assert entity == "order" and sealed is not None and rotated.needs_rekey(sealed, entity)
    new = reseal(old, e.schedule_id, rotated)
    _, resealed = sealed_part(new)
    assert resealed is not None and sealed_key_id(resealed) == "k2"
    assert decode_event(new, e.schedule_id, sealer=cipher("k2", k2=K2)) == e
    clear = encode_event(e)
    assert sealed_part(clear) == ("order", None)
    sealed_now = reseal(clear, e.schedule_id, rotated)
    assert b"card 4111" not in sealed_now and b"acme-secret-header" not in sealed_now
    assert decode_event(sealed_now, e.schedule_id, sealer=rotated) == e
    with pytest.raises(UndecryptablePayload, match="key k1 missing"):
        reseal(old, e.schedule_id, cipher("k2", k2=K2))


def test_unreadable_events_are_counted_per_tier_and_key() -> None:
    seen: list[tuple[str, str, int]] = []
    c = PayloadCipher(KeyRing({"k2": K2}, "k2"), UnreadableEvents(lambda *a: seen.append(a)))
    sealed = cipher().seal("ev-1", "", {}, b"x")
    with pytest.raises(UndecryptablePayload) as info:
        c.open("ev-1", sealed)
    c.unreadable.found("redis", info.value, 2)
    assert seen == [("redis", "k1", 2)]
    snap = c.unreadable.snapshot()
    assert snap["found"] == {"redis": {"k1": 2}}
    assert snap["last_reason"] == {"redis": "undecryptable: key k1 missing"}


def test_with_due_moves_a_sealed_event_without_opening_it() -> None:
    e = event()
    raw = encode_event(e, cipher())
    later = e.due_us + 3_600_000_000
    moved = with_due(raw, later)
    assert moved.partition(b"\n")[2] == raw.partition(b"\n")[2]  # the sealed part unchanged
    got = decode_event(moved, e.schedule_id, sealer=cipher())
    assert got.due_us == later and got.created_at == e.created_at
    assert (got.body, got.headers) == (e.body, e.headers)

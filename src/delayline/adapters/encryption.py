"""Envelope encryption of event payloads at rest: the key ring and the sealed format.

With a key ring configured, the body and headers of every event are sealed with AES-256-GCM
before they reach Redis or ClickHouse, and opened only when the event is read back (firing,
an authorised GET). Everything else (topic, entity type, due time, priority, status) stays in
clear: the tiers sort, route and count by it.

Sealed payload (:data:`VERSION` 1)::

    magic 0xDC | version 0x01 | key id length (1 byte) | key id (ASCII) | nonce (12 bytes)
    | AES-GCM ciphertext of ``<headers JSON>\\n<body>`` with its 16-byte tag

The associated data is the header (magic to nonce) followed by the schedule id: a ciphertext
moved to another event, or given another key id, fails authentication. The key id travels
with the ciphertext, so a new current key needs no rewrite; :class:`PayloadCipher` opens with
whichever ring key the payload names.

Tenant keys: an ``entity_type`` mapped to a key id is sealed with that key instead of the
current one; removing that key from the ring makes the tenant's stored events unreadable.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from delayline.domain.codec import UndecryptablePayload

MAGIC = 0xDC
VERSION = 1
NONCE_BYTES = 12
KEY_BYTES = 32
_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class KeyRingError(ValueError):
    """A key ring that cannot be used; the message says what is wrong (never a key)."""


@dataclass(frozen=True)
class KeyRing:
    """Key id → 256-bit key, the id new payloads are sealed with, and per-tenant key ids."""

    keys: Mapping[str, bytes]
    current: str
    tenants: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key_id, key in self.keys.items():
            if not _KEY_ID.match(key_id):
                raise KeyRingError(f"key id {key_id!r} must be 1-64 of A-Z a-z 0-9 _ . -")
            if len(key) != KEY_BYTES:
                raise KeyRingError(f"key {key_id} must be {KEY_BYTES} bytes, not {len(key)}")
        if self.current not in self.keys:
            raise KeyRingError(f"the current key {self.current!r} is not in the ring")
        for tenant, key_id in self.tenants.items():
            if key_id not in self.keys:
                raise KeyRingError(f"tenant {tenant!r} names key {key_id!r}, not in the ring")

    def key_id_for(self, entity_type: str) -> str:
        """The key id a new payload of ``entity_type`` is sealed with."""
        return self.tenants.get(entity_type, self.current)

    def __repr__(self) -> str:  # never show the keys
        return f"KeyRing(keys={sorted(self.keys)}, current={self.current!r})"


def parse_key_ring(value: str, tenants: Mapping[str, str] | None = None) -> KeyRing:
    """The ring of ``SCHEDULES_ENCRYPTION_KEYS``: a JSON object, or the path of a file holding
    one, ``{"current": "k2", "keys": {"k1": "<base64 of 32 bytes>", "k2": "…"}}``."""
    text = value.strip()
    if not text.startswith("{"):
        try:
            text = Path(text).read_text()
        except OSError as exc:
            raise KeyRingError(f"cannot read the key file: {exc.strerror}") from None
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise KeyRingError("must be a JSON object (or the path of a file holding one)") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), dict) or not doc["keys"]:
        raise KeyRingError('must look like {"current": "k1", "keys": {"k1": "<base64>"}}')
    current = doc.get("current")
    if not isinstance(current, str):
        raise KeyRingError('"current" must name a key id')
    keys: dict[str, bytes] = {}
    for key_id, encoded in doc["keys"].items():
        try:
            keys[key_id] = base64.b64decode(str(encoded), validate=True)
        except binascii.Error:
            raise KeyRingError(f"key {key_id} is not valid base64") from None
    return KeyRing(keys=keys, current=current, tenants=dict(tenants or {}))


def new_key() -> str:
    """A fresh random key, base64, for the ring."""
    return base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()


def _header(key_id: str, nonce: bytes) -> bytes:
    kid = key_id.encode()
    return bytes((MAGIC, VERSION, len(kid))) + kid + nonce


def sealed_key_id(sealed: bytes) -> str:
    """The key id a sealed payload names; :class:`UndecryptablePayload` if not one."""
    if len(sealed) < 3 or sealed[0] != MAGIC or sealed[1] != VERSION:
        raise UndecryptablePayload("", "undecryptable: not a sealed payload (bad header)")
    end = 3 + sealed[2]
    if len(sealed) < end + NONCE_BYTES + 16:
        raise UndecryptablePayload("", "undecryptable: sealed payload cut short")
    return sealed[3:end].decode("ascii", "replace")


class UnreadableEvents:
    """Events found undecryptable, per tier and key id: fed by the stores (from any thread),
    read by metrics and health."""

    def __init__(self, on_found: Callable[[str, str, int], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        self._last: dict[str, str] = {}
        self._on_found = on_found

    def found(self, tier: str, error: UndecryptablePayload, count: int = 1) -> None:
        """Count ``count`` events of ``tier`` that ``error`` made unreadable."""
        with self._lock:
            key = (tier, error.key_id)
            self._counts[key] = self._counts.get(key, 0) + count
            self._last[tier] = error.reason
        if self._on_found is not None:
            self._on_found(tier, error.key_id, count)

    def snapshot(self) -> dict[str, Any]:
        """Totals per tier and key id since start, and the last reason per tier."""
        with self._lock:
            by_tier: dict[str, dict[str, int]] = {}
            for (tier, key_id), n in self._counts.items():
                by_tier.setdefault(tier, {})[key_id or "?"] = n
            return {"found": by_tier, "last_reason": dict(self._last)}


class PayloadCipher:
    """Seals and opens event payloads with a :class:`KeyRing` (the codec's ``PayloadSealer``).

    Thread-safe: it holds no state but the ring's AES-GCM objects and the ``unreadable`` counts.
    """

    def __init__(self, ring: KeyRing, unreadable: UnreadableEvents | None = None) -> None:
        self.ring = ring
        self.unreadable = unreadable or UnreadableEvents()
        self._aead = {key_id: AESGCM(key) for key_id, key in ring.keys.items()}

    def seal(
        self, schedule_id: str, entity_type: str, headers: Mapping[str, str], body: bytes
    ) -> bytes:
        """``headers`` and ``body`` sealed for ``schedule_id``, with its tenant's key."""
        key_id = self.ring.key_id_for(entity_type)
        header = _header(key_id, os.urandom(NONCE_BYTES))
        plain = (orjson.dumps(dict(headers)) if headers else b"") + b"\n" + body
        aad = header + schedule_id.encode()
        return header + self._aead[key_id].encrypt(header[-NONCE_BYTES:], plain, aad)

    def open(self, schedule_id: str, sealed: bytes) -> tuple[dict[str, str], bytes]:
        """The headers and body of a payload sealed for ``schedule_id``.

        Raises :class:`UndecryptablePayload` naming the key id when the key is not in the
        ring, or the payload fails authentication (wrong key, altered, or another event's).
        """
        key_id = sealed_key_id(sealed)
        aead = self._aead.get(key_id)
        if aead is None:
            raise UndecryptablePayload(key_id, f"undecryptable: key {key_id} missing")
        end = 3 + sealed[2] + NONCE_BYTES
        header = sealed[:end]
        try:
            plain = aead.decrypt(header[-NONCE_BYTES:], sealed[end:], header + schedule_id.encode())
        except InvalidTag:
            raise UndecryptablePayload(
                key_id,
                f"undecryptable: key {key_id} does not open it "
                "(wrong key, or the payload was altered or belongs to another event)",
            ) from None
        raw_headers, _, body = plain.partition(b"\n")
        return (orjson.loads(raw_headers) if raw_headers else {}), body

    def needs_rekey(self, sealed: bytes, entity_type: str) -> bool:
        """True when the payload is not sealed with the key its tenant uses now."""
        return sealed_key_id(sealed) != self.ring.key_id_for(entity_type)


SEALED_HEADERS = "~sealed"
"""The headers column of a ClickHouse row whose body column holds its sealed headers and body
(never a JSON object: it cannot be taken for headers in clear)."""


def seal_columns(
    cipher: PayloadCipher | None,
    schedule_id: str,
    entity_type: str,
    headers: Mapping[str, str],
    body: bytes,
) -> tuple[bytes, str]:
    """The ``body`` and ``headers`` columns of a ClickHouse row: sealed with ``cipher``, else
    in clear (headers as JSON, "" for none)."""
    if cipher is not None:
        return cipher.seal(schedule_id, entity_type, headers, body), SEALED_HEADERS
    return body, (orjson.dumps(dict(headers)).decode() if headers else "")


def open_columns(
    cipher: PayloadCipher | None, schedule_id: str, body: bytes, headers: str
) -> tuple[dict[str, str], bytes]:
    """The headers and body of a ClickHouse row's columns; :class:`UndecryptablePayload` when
    sealed and ``cipher`` cannot open them."""
    if headers != SEALED_HEADERS:
        return (orjson.loads(headers) if headers else {}), body
    if cipher is None:
        raise UndecryptablePayload(
            sealed_key_id(body), "undecryptable: sealed, and no key ring configured"
        )
    return cipher.open(schedule_id, body)

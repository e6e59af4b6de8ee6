"""API keys: who a caller is (key id and tenant) and what it may do (scopes).

A key is a random secret of 256 bits (``dl_`` + 43 URL-safe characters) made by
``delayline api-key create``. Settings hold only its SHA-256, never the key: a hash of a
random 256-bit secret cannot be reversed or guessed, so no slow, salted password hash is needed
(those exist to protect low-entropy passwords), and checking a request costs one SHA-256.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from delayline.domain.tenancy import DEFAULT_TENANT, TENANT_PATTERN

KEY_PREFIX = "dl_"
KEY_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"


class Scope(StrEnum):
    """What a key may do; ``admin`` includes the other two."""

    READ = "read"
    """Get, list and follow the history of the tenant's events."""
    SCHEDULE = "schedule"
    """Create, replace, cancel and reschedule the tenant's events."""
    ADMIN = "admin"
    """Every tenant's events, stats, analytics, sync, cleanup, key rotation and the audit."""


class ApiKeyEntry(BaseModel):
    """One configured key, as ``SCHEDULES_API_KEYS`` lists it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(pattern=KEY_ID_PATTERN)]
    """Names the key in the audit trail and the logs (never the key itself)."""
    tenant: Annotated[str, Field(pattern=TENANT_PATTERN)] = DEFAULT_TENANT
    scopes: Annotated[frozenset[Scope], Field(min_length=1)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    """The SHA-256 of the key, 64 lowercase hex digits."""

    @classmethod
    def for_key(
        cls,
        key: str,
        *,
        id: str,
        tenant: str = DEFAULT_TENANT,
        scopes: str = "admin",
    ) -> ApiKeyEntry:
        """The entry of ``key`` (its hash), e.g. for a test or a script that made the key."""
        return cls(id=id, tenant=tenant, scopes=parse_scopes(scopes), sha256=hash_key(key))

    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, value: object) -> object:
        if not isinstance(value, dict | ApiKeyEntry):
            raise ValueError(
                'must be an object {"id", "tenant", "scopes", "sha256"}; plain keys are not '
                "accepted: make one with `delayline api-key create`"
            )
        return value

    @field_validator("scopes", mode="before")
    @classmethod
    def _scopes_from_text(cls, value: object) -> object:
        # "read,schedule" as the CLI takes it, or a JSON list
        return value.split(",") if isinstance(value, str) else value


def check_unique_ids(entries: list[ApiKeyEntry]) -> list[ApiKeyEntry]:
    """``entries`` if no two share an id or a hash; ``ValueError`` naming the duplicate."""
    ids: set[str] = set()
    hashes: set[str] = set()
    for entry in entries:
        if entry.id in ids:
            raise ValueError(f"two keys have the id {entry.id!r}")
        if entry.sha256 in hashes:
            raise ValueError(f"key {entry.id!r} has the same hash as another key")
        ids.add(entry.id)
        hashes.add(entry.sha256)
    return entries


def hash_key(key: str) -> str:
    """The SHA-256 of ``key`` as settings store it."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def new_key() -> str:
    """A fresh random key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def parse_scopes(text: str) -> frozenset[Scope]:
    """``"read,schedule"`` → the scopes; ``ValueError`` naming an unknown one."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError("give at least one scope: read, schedule, admin")
    try:
        return frozenset(Scope(name) for name in names)
    except ValueError:
        unknown = next(n for n in names if n not in {s.value for s in Scope})
        raise ValueError(f"unknown scope {unknown!r}; scopes are read, schedule, admin") from None


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request: its key id, tenant and scopes."""

    key_id: str
    tenant: str
    scopes: frozenset[Scope]

    def can(self, scope: Scope) -> bool:
        """Whether the caller holds ``scope`` (``admin`` holds every scope)."""
        return Scope.ADMIN in self.scopes or scope in self.scopes

    @property
    def is_admin(self) -> bool:
        """Admins work on the stored id space: every tenant's events."""
        return Scope.ADMIN in self.scopes


ANONYMOUS_ADMIN = Principal(key_id="", tenant=DEFAULT_TENANT, scopes=frozenset({Scope.ADMIN}))
"""The caller when no key is configured (an API on loopback): the default tenant's admin."""

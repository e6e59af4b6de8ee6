"""Tenants: whose an event is, told by its schedule id and correlation id alone.

One id space is stored. The default tenant's ids and correlation ids are stored as the caller
gave them; another tenant's are stored qualified, ``@<tenant>/<id>``. The ``@`` prefix is
reserved: the default tenant may not start an id or a correlation id with it, so no tenant can
ever name (and so take, read or cancel) another's. The HTTP API qualifies what a caller sends
and unqualifies what it answers; the services never see a tenant.

A qualified id must still fit the schedule-id limit (200 characters), so a tenant's own ids
are shorter by the prefix's length; likewise for correlation ids and their text limit.
"""

from __future__ import annotations

import re

DEFAULT_TENANT = "default"
TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"
RESERVED_PREFIX = "@"
_TENANT_RE = re.compile(TENANT_PATTERN)
# Above every character a schedule id may hold: "@~" sorts after every "@<tenant>/…" id.
_PAST_QUALIFIED = RESERVED_PREFIX + "~"


class TenancyError(ValueError):
    """A tenant name that is not valid, or an id another tenant's namespace reserves."""


def check_tenant(name: str) -> str:
    """``name`` if it is a valid tenant name, else :class:`TenancyError`."""
    if not _TENANT_RE.fullmatch(name):
        raise TenancyError(
            f"tenant {name[:80]!r} must be 1-32 characters of lowercase letters, digits, _ "
            "and -, starting with a letter or digit"
        )
    return name


def prefix(tenant: str) -> str:
    """What every stored id of ``tenant`` starts with ("" for the default tenant)."""
    return "" if tenant == DEFAULT_TENANT else f"{RESERVED_PREFIX}{tenant}/"


def qualify(tenant: str, value: str) -> str:
    """The stored form of ``tenant``'s id or correlation id ``value``.

    :class:`TenancyError` when the default tenant gives a value in the reserved form."""
    if tenant == DEFAULT_TENANT:
        if value.startswith(RESERVED_PREFIX):
            raise TenancyError(f"ids and correlation ids may not start with {RESERVED_PREFIX!r}")
        return value
    return prefix(tenant) + value


def owns(tenant: str, stored: str) -> bool:
    """Whether the stored id or correlation id ``stored`` belongs to ``tenant``."""
    if tenant == DEFAULT_TENANT:
        return not stored.startswith(RESERVED_PREFIX)
    return stored.startswith(prefix(tenant))


def unqualify(tenant: str, stored: str) -> str:
    """``tenant``'s own form of its stored id or correlation id (``owns`` must hold)."""
    if not owns(tenant, stored):
        raise TenancyError(f"{stored[:200]!r} is not an id of tenant {tenant!r}")
    return stored[len(prefix(tenant)) :]


def tenant_of(stored: str) -> str:
    """The tenant a stored id belongs to."""
    if stored.startswith(RESERVED_PREFIX):
        name, slash, _ = stored[1:].partition("/")
        if slash and _TENANT_RE.fullmatch(name):
            return name
    return DEFAULT_TENANT


def first_id_after(tenant: str, cursor: str) -> str:
    """Where a search in id order resumes to meet only ``tenant``'s ids after the stored id
    ``cursor`` (ids of other tenants may still follow; :func:`skip_past` jumps them)."""
    start = prefix(tenant)
    return max(cursor, start) if start else cursor


def skip_past(tenant: str, stored: str) -> str | None:
    """After meeting ``stored`` (not ``tenant``'s) in id order: the cursor past the foreign
    range it starts, or None when no more of ``tenant``'s ids can follow."""
    if tenant != DEFAULT_TENANT:
        return None  # a tenant's ids are contiguous: past them, none of its ids remain
    return _PAST_QUALIFIED  # the default tenant's ids resume after every "@…" id

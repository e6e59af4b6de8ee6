"""``delayline api-key``: make API keys."""

from __future__ import annotations

from typing import Annotated

import orjson
import typer

from delayline.api.keys import KEY_PREFIX, ApiKeyEntry, hash_key, new_key, parse_scopes
from delayline.cli.common import console
from delayline.domain.tenancy import DEFAULT_TENANT, check_tenant


def api_key_create(
    tenant: Annotated[str, typer.Option(help="The tenant the key acts for.")] = DEFAULT_TENANT,
    scopes: Annotated[
        str, typer.Option(help="Comma-separated: read, schedule, admin.")
    ] = "read,schedule",
    key_id: Annotated[
        str | None, typer.Option("--id", help="Name of the key in the audit trail.")
    ] = None,
) -> None:
    """Print a new random key (once: it is stored nowhere) and its SCHEDULES_API_KEYS entry
    (its SHA-256, never the key)."""
    try:
        check_tenant(tenant)
        wanted = parse_scopes(scopes)
        key = new_key()
        entry = ApiKeyEntry(
            id=key_id or f"{tenant}-{key[len(KEY_PREFIX) : len(KEY_PREFIX) + 6]}",
            tenant=tenant,
            scopes=wanted,
            sha256=hash_key(key),
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc).splitlines()[-1]) from None
    doc = entry.model_dump(mode="json")
    doc["scopes"] = sorted(doc["scopes"])
    console.print(f"key (shown once; give it as X-API-Key): {key}", soft_wrap=True, highlight=False)
    console.print("add to SCHEDULES_API_KEYS (a JSON list):", highlight=False)
    print(orjson.dumps(doc).decode(), flush=True)

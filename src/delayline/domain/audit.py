"""The audit trail's record: who did what to the service, with which parameters, and how it
ended."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from delayline.domain.events import to_epoch_us


def audit_id(at: datetime) -> str:
    """A unique id that sorts by time: the epoch microseconds, zero-padded, and 64 random
    bits (the audit is paged in this order)."""
    return f"{to_epoch_us(at):017d}-{os.urandom(8).hex()}"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audited action. ``key_id`` is empty when no key is configured (loopback)."""

    at: datetime
    key_id: str
    tenant: str
    action: str
    parameters: dict[str, Any]
    outcome: str
    """``ok``, or ``error: <what>``."""
    id: str = field(default="")

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", audit_id(self.at))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "key_id": self.key_id,
            "tenant": self.tenant,
            "action": self.action,
            "parameters": self.parameters,
            "outcome": self.outcome,
        }


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Which entries to read: ``since <= at < until``, optionally one key and one action,
    in id order after ``after``."""

    since: datetime
    until: datetime
    key_id: str | None = None
    action: str | None = None
    after: str = ""
    limit: int = 100

    def matches(self, entry: AuditEntry) -> bool:
        """Whether ``entry`` is one this query reads."""
        return (
            self.since <= entry.at < self.until
            and (self.key_id is None or entry.key_id == self.key_id)
            and (self.action is None or entry.action == self.action)
            and entry.id > self.after
        )

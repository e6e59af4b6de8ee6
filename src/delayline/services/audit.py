"""The audit trail: every mutating admin action, recorded off the request path.

``AuditService.record`` appends to a buffer (``AuditRecorder``, the same batch writer as the
lifecycle history) that a background task writes to ClickHouse; ``find`` reads the store and
this process's unwritten entries, so a caller sees its own action at once.
``AuditedRotation`` wraps the key rotation so each of its steps and its end are recorded.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from delayline.domain.audit import AuditEntry, AuditQuery
from delayline.ports import AuditStore, Clock, RekeyPage
from delayline.services.analytics import BatchRecorder

log = logging.getLogger(__name__)

ROTATION_ACTOR = "key-rotation"
"""The ``key_id`` of the entries the rotation itself records (each step and its end)."""


class AuditRecorder(BatchRecorder[AuditEntry]):
    """Buffers audit entries; writes them in batches from the main loop."""

    name = "audit"

    def __init__(self, store: AuditStore, **options: Any) -> None:
        super().__init__(store.write_entries, **options)


class AuditService:
    """Records actions and reads them back."""

    def __init__(self, store: AuditStore, recorder: AuditRecorder, clock: Clock) -> None:
        self._store = store
        self.recorder = recorder
        self._clock = clock

    def record(
        self,
        *,
        key_id: str,
        tenant: str,
        action: str,
        parameters: dict[str, Any],
        outcome: str = "ok",
    ) -> AuditEntry:
        """Record one action (never blocks, never raises)."""
        entry = AuditEntry(self._clock.now(), key_id, tenant, action, parameters, outcome)
        self.recorder.record(entry)
        return entry

    async def find(self, query: AuditQuery) -> list[AuditEntry]:
        """Matching entries in time order, written or still waiting here.

        The buffer is read before the store: an entry written in between is in both and
        counted once; read the other way round it could be in neither."""
        waiting = [e for e in self.recorder.snapshot() if query.matches(e)]
        stored = await self._store.find(query)
        seen = {e.id for e in stored}
        merged = stored + [e for e in waiting if e.id not in seen]
        return sorted(merged, key=lambda e: e.id)[: query.limit]

    async def start(self) -> None:
        """Start writing in the background."""
        await self.recorder.start()

    async def close(self) -> None:
        """Stop the writer, writing what is left."""
        await self.recorder.stop()


class Rotation(Protocol):
    """The key rotation as :class:`AuditedRotation` drives it (``KeyRotation``)."""

    def begin(self) -> dict[str, Any]: ...

    def report(self) -> dict[str, Any]: ...

    @property
    def running(self) -> bool: ...

    async def wait(self) -> Any: ...


class AuditedRotation:
    """The key rotation, each step and the end of it in the audit trail.

    Give :meth:`step` to the rotation as its ``on_step`` hook, then :meth:`attach` it."""

    def __init__(self, audit: AuditService) -> None:
        self._audit = audit
        self._rotation: Rotation | None = None
        self._watch: asyncio.Task[None] | None = None

    def attach(self, rotation: Rotation) -> None:
        """The rotation this wraps."""
        self._rotation = rotation

    def _inner(self) -> Rotation:
        if self._rotation is None:
            raise RuntimeError("AuditedRotation.attach() was not called")
        return self._rotation

    def begin(self) -> dict[str, Any]:
        """Start a rotation unless one runs; its status. (Who started it is recorded by the
        caller: the API records ``rotate-keys`` with the key.)"""
        rotation = self._inner()
        already = rotation.running
        status = rotation.begin()
        if not already:
            self._watch = asyncio.create_task(self._record_end(), name="audit-rotation")
        return status

    def report(self) -> dict[str, Any]:
        """The status of the last or running rotation."""
        return self._inner().report()

    def step(self, tier: str, page: RekeyPage) -> None:
        """The rotation's ``on_step`` hook: one page of one tier re-sealed."""
        self._audit.record(
            key_id=ROTATION_ACTOR,
            tenant="",
            action="rotate-keys.step",
            parameters={
                "tier": tier,
                "scanned": page.scanned,
                "rekeyed": page.rekeyed,
                "restored": page.restored,
                "unreadable": page.unreadable,
            },
        )

    async def _record_end(self) -> None:
        rotation = self._inner()
        try:
            await rotation.wait()
        except Exception as exc:  # the status says it failed; the audit says so too
            log.debug("key rotation ended with %s", type(exc).__name__)
        status = rotation.report()
        state = str(status.get("state", "?"))
        self._audit.record(
            key_id=ROTATION_ACTOR,
            tenant="",
            action="rotate-keys.finish",
            parameters={"key_id": status.get("key_id", ""), "tiers": status.get("tiers", {})},
            outcome="ok" if state == "done" else f"error: {status.get('error') or state}",
        )

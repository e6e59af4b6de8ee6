"""Key rotation: re-seal every stored payload with the key its tenant uses now.

A new current key needs no rewrite (each payload names its key); rotation is for retiring a
key. It runs in the background of the serving application, a page at a time, while events
are scheduled and fired: in Redis each payload is replaced only if unchanged since it was read
(compare-and-set), in ClickHouse as a new version of the row. Payloads the ring cannot open
are counted and left as they are; events parked because their key was missing are put back
in the due set once the ring opens them again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from delayline.ports import RekeyableTier, RekeyPage

log = logging.getLogger(__name__)

PAGE = 500
"""Payloads read per step: bounds each compare-and-set script and each ClickHouse insert."""


@dataclass
class TierProgress:
    """Running totals of one tier's rotation."""

    scanned: int = 0
    rekeyed: int = 0
    unreadable: int = 0
    restored: int = 0
    done: bool = False

    def add(self, page: RekeyPage) -> None:
        """Count one page."""
        self.scanned += page.scanned
        self.rekeyed += page.rekeyed
        self.unreadable += page.unreadable
        self.restored += page.restored


@dataclass
class RotationStatus:
    """The state of the last (or running) rotation, as the API shows it."""

    state: str = "idle"  # idle, running, done, failed
    key_id: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    tiers: dict[str, TierProgress] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


class KeyRotation:
    """Runs one rotation at a time over the given tiers (``{"redis": …, "clickhouse": …}``)."""

    def __init__(
        self,
        tiers: dict[str, RekeyableTier],
        current_key_id: str,
        page: int = PAGE,
        on_step: Callable[[str, RekeyPage], None] | None = None,
    ) -> None:
        self._tiers = tiers
        self._key_id = current_key_id
        self._page = page
        self._on_step = on_step
        self._task: asyncio.Task[None] | None = None
        self.status = RotationStatus()

    @property
    def running(self) -> bool:
        """True while a rotation runs."""
        return self._task is not None and not self._task.done()

    def start(self) -> RotationStatus:
        """Start a rotation unless one runs; the status either way."""
        if not self.running:
            self.status = RotationStatus(
                state="running",
                key_id=self._key_id,
                started_at=time.time(),
                tiers={name: TierProgress() for name in self._tiers},
            )
            self._task = asyncio.create_task(self._run(), name="key-rotation")
        return self.status

    def begin(self) -> dict[str, Any]:
        """:meth:`start`, as the API shows it."""
        return self.start().as_dict()

    def report(self) -> dict[str, Any]:
        """The status of the last or running rotation, as the API shows it."""
        return self.status.as_dict()

    async def wait(self) -> RotationStatus:
        """Wait for the running rotation (if any) to end."""
        if self._task is not None:
            await asyncio.shield(self._task)
        return self.status

    async def stop(self) -> None:
        """Cancel a running rotation (at shutdown); a later one starts over."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            if self.status.state == "running":  # cancelled before its first step
                self.status.state, self.status.error = "failed", "stopped"
                self.status.finished_at = time.time()

    async def _run(self) -> None:
        status = self.status
        try:
            for name, tier in self._tiers.items():
                progress = status.tiers[name]
                cursor = ""
                while True:
                    cursor, page = await tier.rekey_page(cursor, self._page)
                    progress.add(page)
                    if self._on_step is not None:
                        self._on_step(name, page)
                    log.info(
                        "key rotation to %s: %s scanned %d, re-sealed %d, restored %d, "
                        "unreadable %d",
                        self._key_id,
                        name,
                        progress.scanned,
                        progress.rekeyed,
                        progress.restored,
                        progress.unreadable,
                    )
                    if not cursor:
                        break
                progress.done = True
            status.state = "done"
        except asyncio.CancelledError:
            status.state, status.error = "failed", "stopped"
            raise
        except Exception as exc:  # reported in the status; a new start retries from scratch
            log.warning("key rotation failed: %s", exc)
            status.state, status.error = "failed", f"{type(exc).__name__}: {exc}"[:300]
        finally:
            status.finished_at = time.time()

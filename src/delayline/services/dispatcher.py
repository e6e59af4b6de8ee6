"""The dispatcher: sleeps until the next due event, claims due events in batches and fires them.

No polling period: it sleeps until the earliest due time (never longer than
``REDIS_PROCESSING_INTERVAL``) and is woken at once when any process schedules a sooner event.
Each claim is a lease; events are acknowledged only after the broker's delivery report, so a
dispatcher that dies leaves its events to be reclaimed by another when the lease expires.

Firing a claimed batch, and the claim order batches keep, are in :mod:`.dispatcher_firing`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
from collections.abc import Callable, Collection

from delayline.ports import Claim, Clock, EventPublisher, LifecycleSink, NearTermStore, OutcomeSink
from delayline.services.claim_batch import ClaimBatchSize
from delayline.services.dispatcher_firing import BatchFiring, DispatcherConfig, due_range

__all__ = ["Dispatcher", "DispatcherConfig"]

log = logging.getLogger(__name__)


class Dispatcher(BatchFiring):
    """Claims due events from the near-term store and fires them to the publisher."""

    def __init__(
        self,
        store: NearTermStore,
        publisher: EventPublisher,
        sink: OutcomeSink,
        clock: Clock,
        config: DispatcherConfig,
        *,
        lifecycle: LifecycleSink | None = None,
        owned_shards: Callable[[], Collection[int]] | None = None,
    ) -> None:
        super().__init__(store, publisher, sink, clock, config, lifecycle=lifecycle)
        self._owned_shards = owned_shards  # None: every shard
        self._wake = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._slots = asyncio.Semaphore(config.max_inflight_batches)
        self._claim_size = ClaimBatchSize(config.claim_batch_min_size, config.claim_batch_size)
        self._next_claim = self._claim_size.first
        self._batches: set[asyncio.Task[None]] = set()
        self.claims_in_flight = 0
        self._lookahead_us = int(config.claim_lookahead_seconds * 1e6)
        self._claims = itertools.count()
        self._stepping = asyncio.Lock()
        """Held by each step of the claim loop (see :meth:`hand_back`)."""

    def _shards(self) -> Collection[int] | None:
        return None if self._owned_shards is None else self._owned_shards()

    async def hand_back(self, shards: Collection[int]) -> None:
        """Wait until no claim that may hold events of ``shards`` is in flight.

        Called once ``shards`` are gone from ``owned_shards``: the steps after the one under
        way leave them out, so the batches claimed up to its end are the last ones there."""
        self._wake.set()  # a step asleep ends now
        async with self._stepping:
            batches = list(self._batches)
        if batches:
            await asyncio.gather(*batches, return_exceptions=True)

    def wake(self) -> None:
        """Re-evaluate the next due time now (called by the wake-up listener)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop claiming; :meth:`run` returns once claimed batches are finished."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Claim and fire until :meth:`stop`; then wait for in-flight batches."""
        listener = asyncio.create_task(self._listen_for_wakeups(), name="dispatcher-wakeups")
        reaper = asyncio.create_task(self._reap_forever(), name="dispatcher-reaper")
        with contextlib.suppress(TimeoutError):  # start anyway; the sleep cap bounds lateness
            await asyncio.wait_for(self._subscribed.wait(), 5)
        try:
            while not self._stopping.is_set():
                try:
                    async with self._stepping:
                        await self._step()
                except Exception as exc:  # a store outage must not end the loop
                    log.warning("dispatcher step failed (%s); retrying", exc)
                    await self._sleep(min(1.0, self._config.max_sleep_seconds))
        finally:
            listener.cancel()
            reaper.cancel()
            if self._batches:
                await asyncio.gather(*self._batches, return_exceptions=True)
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            with contextlib.suppress(asyncio.CancelledError):
                await reaper

    async def _step(self) -> None:
        now_us = self._now_us()
        if now_us < self._pause_until_us:  # the broker is down: don't churn claims
            await self._sleep((self._pause_until_us - now_us) / 1e6)
            return
        await self._slots.acquire()
        try:
            claim = await self._store.claim(
                now_us + self._lookahead_us,
                self._next_claim,
                self._config.lease_seconds,
                self._shards(),
            )
        except BaseException:
            self._slots.release()
            raise
        self._next_claim = self._claim_size.after(len(claim.events))
        if claim.events:
            number = next(self._claims)
            self._unhanded[number] = min(claim.fire_at_us or [e.due_us for e in claim.events])
            task = asyncio.create_task(self._fire_and_release(claim, number))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)
            return
        self._slots.release()
        next_due = claim.next_due_us
        timeout = self._config.max_sleep_seconds
        if next_due is not None:
            ahead = next_due - self._lookahead_us - self._now_us()
            timeout = min(timeout, max(0.0, ahead / 1e6))
        if timeout > 0:
            await self._sleep(timeout)

    async def _sleep(self, timeout: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _listen_for_wakeups(self) -> None:
        while True:
            try:
                async for _due_us in self._store.wakeups():
                    self._subscribed.set()
                    self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("wake-up subscription lost (%s); resubscribing", exc)
                await asyncio.sleep(0.5)
                self._wake.set()  # something may have been scheduled meanwhile

    async def _reap_forever(self) -> None:
        period = min(1.0, self._config.lease_seconds / 3)
        while True:
            await asyncio.sleep(period)
            try:
                if await self._store.reap(self._now_us(), shards=self._shards()):
                    self._wake.set()
            except Exception as exc:
                log.warning("reaping expired leases failed: %s", exc)

    async def _fire_and_release(self, claim: Claim, number: int) -> None:
        self.claims_in_flight += 1
        try:
            await self.fire(claim, number)
        except Exception:
            # Unacknowledged events stay leased and return after the lease: nothing is lost.
            log.exception(
                "firing a batch of %d events %s failed; they fire again when their lease ends",
                len(claim.events),
                due_range(claim.events),
            )
        finally:
            await self._mark_handed(number, math.inf)
            del self._unhanded[number]
            self.claims_in_flight -= 1
            self._slots.release()

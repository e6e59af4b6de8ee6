"""Firing one claimed batch: publish each event at its time, then acknowledge, retry or fail it.

Claims come out of Redis in due order (then priority, then submission order), and several
claimed batches are in flight at once. Each is handed to the producer in claim order: a batch
hands over events due at ``t`` only once every batch claimed before it has handed over all of
its events due at or before ``t``. Those are due too, so this adds no lateness; and the
producer (idempotent) keeps that order per partition.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from delayline.backoff import backoff_delay
from delayline.domain.events import EventStatus, ScheduledEvent, from_epoch_us, to_epoch_us
from delayline.domain.outcomes import (
    Delivery,
    ExecutionResult,
    LifecycleEntry,
    Outcome,
    Transition,
)
from delayline.errors import ErrorClass, PartlyAcknowledged, PublishError, classify
from delayline.ports import (
    Claim,
    Clock,
    EventPublisher,
    Finished,
    LifecycleSink,
    NearTermStore,
    OutcomeSink,
)

# The dispatcher's logger: its log lines keep one name whichever module writes them.
log = logging.getLogger("delayline.services.dispatcher")


@dataclass(frozen=True, slots=True)
class DispatcherConfig:
    """The dispatcher's tunables (from :class:`delayline.settings.Settings`)."""

    max_sleep_seconds: float = 5.0
    claim_batch_size: int = 2000
    """The largest claim: each claim asks for twice what the last one got, between
    ``claim_batch_min_size`` and this (:class:`ClaimBatchSize`)."""
    claim_batch_min_size: int = 100
    max_inflight_batches: int = 16
    lease_seconds: float = 30.0
    max_publish_attempts: int = 5
    retry_backoff_initial: float = 0.5
    retry_backoff_max: float = 60.0
    node_id: str = "node"
    claim_lookahead_seconds: float = 0.02
    """Claim events this long before they are due, then publish each at its time: the claim's
    round trip (and a busy server's queue) no longer add to lateness. Never fires early. Too
    short a lookahead leaves the round trip in the lateness (BENCHMARKS.md, precision)."""


class BatchFiring:
    """Fires claimed batches from the near-term store to the publisher, in claim order."""

    def __init__(
        self,
        store: NearTermStore,
        publisher: EventPublisher,
        sink: OutcomeSink,
        clock: Clock,
        config: DispatcherConfig,
        *,
        lifecycle: LifecycleSink | None = None,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._sink = sink
        self._lifecycle = lifecycle
        self._clock = clock
        self._config = config
        self._pause_until_us = 0
        """Claiming waits until then: the broker was unavailable."""
        # execution ids: unique per process start + a counter (cheaper than a uuid4 per event)
        self._run_id = uuid.uuid4().hex[:16]
        self._executions = itertools.count()
        self._unhanded: dict[int, float] = {}
        """Per claim in flight (by claim number): the fire time of its earliest event not yet
        handed to the producer (``inf``: none left)."""
        self._handed = asyncio.Condition()

    def _now_us(self) -> int:
        return to_epoch_us(self._clock.now())

    async def _mark_handed(self, number: int, next_fire_us: float) -> None:
        async with self._handed:
            self._unhanded[number] = next_fire_us
            self._handed.notify_all()

    async def _turn(self, number: int, fire_us: int) -> None:
        """Wait until every batch claimed before ``number`` handed over its events due by
        ``fire_us`` (they are due too: this keeps claim order without adding lateness)."""
        async with self._handed:
            await self._handed.wait_for(
                lambda: all(t > fire_us for n, t in self._unhanded.items() if n < number)
            )

    async def fire(self, claim: Claim, number: int | None = None) -> None:
        """Publish a claimed batch, then acknowledge, retry or fail each event.

        ``number``: the claim's place in claim order (see the module docstring); None when
        it is fired on its own."""
        started_us = self._now_us()
        started_wall = time.time()  # delivery reports carry wall time; map them onto the clock
        finished: list[Finished] = []
        to_publish: list[ScheduledEvent] = []
        fire_at: list[int] = []
        scores = claim.fire_at_us or [e.due_us for e in claim.events]
        lease = f"lease {claim.token[:8]}"  # names the claim; too short to ack with
        for event in claim.events:
            self._transition(event, Transition.CLAIMED, started_us, lease)
        for event, score in zip(claim.events, scores, strict=True):
            late_s = (started_us - event.due_us) / 1e6
            if event.max_delay_seconds and late_s > event.max_delay_seconds:
                reason = (
                    f"would fire {late_s:.3f} s late; "
                    f"max_delay_seconds is {event.max_delay_seconds}"
                )
                finished.append(Finished(event.schedule_id, EventStatus.SKIPPED, reason))
                self._record(event, Outcome.SKIPPED, started_us, started_us, reason)
            else:
                to_publish.append(event)
                fire_at.append(max(score, event.due_us))  # a retry waits out its backoff
        if number is not None:
            await self._mark_handed(number, min(fire_at, default=math.inf))
        if to_publish:
            results = await self._publish_on_time(to_publish, fire_at, number)
            acked_us = [
                r
                if isinstance(r, BaseException)
                else started_us + int((r.acked_at - started_wall) * 1e6)
                for r in results
            ]
            for event, result, at_us in zip(to_publish, results, acked_us, strict=True):
                if isinstance(result, Delivery) and isinstance(at_us, int):
                    self._transition(event, Transition.PUBLISHED, at_us, delivery=result)
            finished += await self._settle(claim.token, to_publish, acked_us, started_us)
        if finished:
            acked = await self._ack(claim.token, finished, started_us)
            if acked < len(finished):
                # The lease ran out first: the reaper gave these events back to the due set.
                log.warning(
                    "%d of %d events of a batch %s lost their lease before their "
                    "acknowledgement; they fire again",
                    len(finished) - acked,
                    len(finished),
                    due_range(claim.events),
                )
            by_id = {e.schedule_id: e for e in claim.events}
            done_us = self._now_us()
            for item in finished:
                self._transition(
                    by_id[item.schedule_id], _FINAL[item.status], done_us, item.reason or ""
                )

    async def _ack(self, token: str, finished: Sequence[Finished], claimed_us: int) -> int:
        """Acknowledge, retrying while the lease lasts: a lost ack means a duplicate firing.
        Returns how many events were still leased under ``token``."""
        deadline_us = claimed_us + int(self._config.lease_seconds * 1e6)
        attempt = acked = 0
        while True:
            try:
                return acked + await self._store.ack(token, finished, self._now_us())
            except PartlyAcknowledged as exc:  # only the unreachable shards' events again
                acked += exc.acknowledged
                remaining = set(exc.remaining)
                finished = [item for item in finished if item.schedule_id in remaining]
                error: Exception = exc
            except Exception as exc:
                error = exc
            attempt += 1
            delay = backoff_delay(attempt, 0.05, 1.0)
            if classify(error) is not ErrorClass.UNAVAILABLE or (
                self._now_us() + delay * 1e6 >= deadline_us
            ):
                if acked:  # the rest return to their due sets when their lease ends
                    return acked
                raise error
            log.warning("ack failed (%s); retrying in %.2f s", error, delay)
            await asyncio.sleep(delay)

    async def _publish_on_time(
        self, events: Sequence[ScheduledEvent], fire_at: Sequence[int], number: int | None
    ) -> list[BaseException | Delivery]:
        """Publish each event at its ``fire_at`` time (claims may run a little ahead of time).

        Events come in claim order (fire time, then priority); each run of due events is handed
        to the producer at once, without waiting for the previous run's delivery reports.
        """
        sends: list[asyncio.Task[list[BaseException | Delivery]]] = []
        start = 0
        while start < len(events):
            wait_us = fire_at[start] - self._now_us()
            if wait_us > 0:
                await asyncio.sleep(wait_us / 1e6)
                continue
            now_us = self._now_us()
            end = start + 1
            while end < len(events) and fire_at[end] <= now_us:
                end += 1
            if number is not None:
                await self._turn(number, max(fire_at[start:end]))
            sends.append(asyncio.create_task(self._publisher.publish(events[start:end])))
            start = end
            if number is not None:
                await self._mark_handed(number, min(fire_at[start:], default=math.inf))
        results: list[BaseException | Delivery] = []
        for chunk in await asyncio.gather(*sends):
            results += chunk
        return results

    async def _settle(
        self,
        token: str,
        events: Sequence[ScheduledEvent],
        results: Sequence[BaseException | int],
        started_us: int,
    ) -> list[Finished]:
        finished: list[Finished] = []
        unavailable = 0
        first_error = ""
        for event, result in zip(events, results, strict=True):
            if not isinstance(result, BaseException):
                finished.append(Finished(event.schedule_id, EventStatus.COMPLETED))
                self._record(event, Outcome.SUCCESS, started_us, result, None)
                continue
            kind = classify(result)
            unavailable += kind is ErrorClass.UNAVAILABLE
            first_error = first_error or str(result)
            attempts = event.attempts + (kind is not ErrorClass.UNAVAILABLE)
            if kind is ErrorClass.PERMANENT or attempts >= self._config.max_publish_attempts:
                finished.append(Finished(event.schedule_id, EventStatus.FAILED, str(result)))
                timed_out = isinstance(result, PublishError) and result.timed_out
                outcome = Outcome.TIMEOUT if timed_out else Outcome.ERROR
                self._record(event, outcome, started_us, self._now_us(), str(result))
                continue
            delay = backoff_delay(
                max(attempts, 1), self._config.retry_backoff_initial, self._config.retry_backoff_max
            )
            again = replace(event, attempts=attempts, last_error=str(result))
            if await self._store.retry(token, again, self._now_us() + int(delay * 1e6)):
                self._transition(again, Transition.RETRIED, self._now_us(), str(result))
        if unavailable:
            # The broker is down: pause claiming for a backoff instead of spinning on it.
            pause = backoff_delay(1, self._config.retry_backoff_initial, 5.0)
            self._pause_until_us = self._now_us() + int(pause * 1e6)
            log.warning(
                "broker unavailable for %d events (%s); pausing %.2f s",
                unavailable,
                first_error[:200],
                pause,
            )
        return finished

    def _transition(
        self,
        event: ScheduledEvent,
        transition: Transition,
        at_us: int,
        detail: str = "",
        delivery: Delivery | None = None,
    ) -> None:
        if self._lifecycle is None:
            return
        try:
            self._lifecycle.transition(
                LifecycleEntry(
                    schedule_id=event.schedule_id,
                    transition=transition,
                    at=_at(at_us),
                    event=event,
                    node=self._config.node_id,
                    detail=detail,
                    partition=delivery.partition if delivery else None,
                    offset=delivery.offset if delivery else None,
                )
            )
        except Exception:  # the sink must never break firing
            log.exception("recording a lifecycle transition failed")

    def _record(
        self,
        event: ScheduledEvent,
        outcome: Outcome,
        started_us: int,
        executed_us: int,
        error: str | None,
    ) -> None:
        try:
            self._sink.record(
                ExecutionResult(
                    execution_id=f"{self._run_id}-{next(self._executions)}",
                    event=event,
                    executed_at=_at(executed_us),
                    outcome=outcome,
                    error_message=error,
                    retry_count=min(event.attempts, 255),
                    processing_time_ms=max(0, (executed_us - started_us) // 1000),
                    node_id=self._config.node_id,
                )
            )
        except Exception:  # the sink must never break firing
            log.exception("recording an execution result failed")


_FINAL = {
    EventStatus.COMPLETED: Transition.COMPLETED,
    EventStatus.FAILED: Transition.FAILED,
    EventStatus.SKIPPED: Transition.SKIPPED,
}


def _at(epoch_us: int) -> datetime:
    return from_epoch_us(epoch_us)


def due_range(events: Sequence[ScheduledEvent]) -> str:
    """``(due FIRST to LAST)``: names the events of a batch in logs (claims are in due order)."""
    dues = [e.due_us for e in events]
    return f"(due {_at(min(dues)).isoformat()} to {_at(max(dues)).isoformat()})"

"""The Delayed Events Consumer: Kafka messages → scheduled events, cancellations or dead letters.

The message contract is in ``docs/INGRESS.md``. This module decides; the Kafka adapter moves
bytes. Guarantees:

- an offset is committed only after ``schedule_events`` / ``cancel_event`` returned for every
  message up to it, and after its dead letters were acknowledged by the broker;
- a store that is unavailable pauses consumption without committing; the held batch is retried
  with backoff and consumption resumes when it succeeds;
- one bad message never stops the consumer: it goes to the dead-letter topic with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from delayline.backoff import backoff_delay
from delayline.clock import SystemClock
from delayline.domain.events import InvalidEventError
from delayline.errors import is_unavailable
from delayline.ports import Clock, DelayedMessage, MessageSource, SchedulerApi, Upserted
from delayline.services.ingress_parse import Cancel, Reject, Schedule, parse
from delayline.services.scheduler import kafka_revision

log = logging.getLogger(__name__)

__all__ = ["DelayedEventsConsumer", "IngressStats"]


@dataclass(slots=True)
class IngressStats:
    """Counters for metrics; ``paused`` is True while a store is unavailable.

    ``stalled_since`` (monotonic seconds) is set while a batch waits to be retried (a store or
    the dead-letter topic unavailable, or an unexpected error): nothing after it is consumed.
    """

    consumed: int = 0
    scheduled: int = 0
    replaced: int = 0
    duplicates: int = 0
    cancelled: int = 0
    cancel_missed: int = 0
    dead_lettered: int = 0
    dead_letter_refused: int = 0
    batches: int = 0
    commit_failures: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    ignored_reasons: dict[str, int] = field(default_factory=dict)
    pauses: int = 0
    paused: bool = False
    retries: int = 0
    stalled_since: float | None = None
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """A plain dict (for ``get_stats`` and the metrics helper)."""
        return asdict(self)

    def stalled_seconds(self, now: float | None = None) -> float:
        """How long the batch in hand has been waiting (0 when none is)."""
        if self.stalled_since is None:
            return 0.0
        return max(0.0, (time.monotonic() if now is None else now) - self.stalled_since)

    def count(self, counts: dict[str, int], code: str) -> None:
        """Add one to ``counts[code]``."""
        counts[code] = counts.get(code, 0) + 1


class _StoreUnavailable(Exception):
    pass


class DelayedEventsConsumer:
    """Runs the ingress loop in one task. ``start()``/``stop()`` or ``async with``."""

    def __init__(
        self,
        scheduler: SchedulerApi,
        source: MessageSource,
        *,
        clock: Clock | None = None,
        batch_size: int = 500,
        poll_timeout: float = 0.1,
        retry_initial: float = 0.1,
        retry_max: float = 5.0,
        stop_timeout: float = 10.0,
        on_dead_letter: Callable[[str], None] | None = None,
    ) -> None:
        """``on_dead_letter`` is called with each dead letter's reason code (a metrics label)."""
        self._scheduler = scheduler
        self._source = source
        self._clock: Clock = clock or SystemClock()
        self._batch_size = batch_size
        self._poll_timeout = poll_timeout
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._stop_timeout = stop_timeout
        self._on_dead_letter = on_dead_letter
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._held: list[DelayedMessage] = []
        self.stats = IngressStats()

    async def start(self) -> None:
        """Join the consumer group and start consuming in the background."""
        if self._task is not None:
            return
        self._stopping.clear()
        await self._source.start()
        self._task = asyncio.create_task(self._run(), name="delayline-ingress")

    async def stop(self) -> None:
        """Finish and commit the batch in hand, then leave the group (idempotent)."""
        if self._task is None:
            return
        self._stopping.set()
        task, self._task = self._task, None
        try:
            await asyncio.wait_for(asyncio.shield(task), self._stop_timeout)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            await self._source.stop()

    async def __aenter__(self) -> DelayedEventsConsumer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                if await self._step():
                    attempt = 0
                    self.stats.stalled_since = None
                    continue
            except Exception as exc:  # the loop must survive anything; log and back off
                log.exception("delayed-events consumer step failed")
                self.stats.last_error = repr(exc)
            attempt += 1
            self.stats.retries += 1
            if self.stats.stalled_since is None:
                self.stats.stalled_since = time.monotonic()
            delay = backoff_delay(attempt, self._retry_initial, self._retry_max)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _step(self) -> bool:
        """One poll-and-process round; False when a held batch is still waiting for a store."""
        polled = list(await self._source.poll(self._batch_size, self._poll_timeout))
        revoked = self._source.take_revoked()
        if self._held:
            self._held.extend(polled)
        else:
            self.stats.consumed += len(polled)
            self._held = polled
        if revoked:  # another member owns them now and resumes from their committed offsets
            self._held = [m for m in self._held if (m.topic, m.partition) not in revoked]
        if not self._held:
            await self._set_paused(False)
            return True
        try:
            await self._process(self._held)
        except _StoreUnavailable as exc:
            self.stats.last_error = str(exc.__cause__ or exc)
            log.warning("store unavailable, pausing consumption: %s", self.stats.last_error)
            await self._set_paused(True)
            return False
        self._held = []
        await self._set_paused(False)
        return True

    async def _set_paused(self, paused: bool) -> None:
        if paused != self.stats.paused:
            await (self._source.pause() if paused else self._source.resume())
            self.stats.paused = paused
            self.stats.pauses += paused

    async def _process(self, batch: Sequence[DelayedMessage]) -> None:
        now = self._clock.now()
        rejects: list[tuple[DelayedMessage, str]] = []
        group: list[tuple[DelayedMessage, Any]] = []
        for msg in batch:
            try:
                decision = parse(msg, self._scheduler.build_event, now)
            except Exception as exc:  # a parser bug must not stop the consumer either
                log.exception("unexpected error parsing %s:%d@%d", msg.topic, msg.partition,
                              msg.offset)  # fmt: skip
                decision = Reject(f"internal_error: {exc!r}")
            if isinstance(decision, Schedule):
                group.append((msg, decision.event))
            elif isinstance(decision, Cancel):
                await self._schedule(group, rejects)  # keep the order of schedule and cancel
                group = []
                await self._cancel(msg, decision.schedule_id, rejects)
            else:
                rejects.append((msg, decision.reason))
        await self._schedule(group, rejects)
        if rejects:
            await self._dead_letter(rejects)
        offsets: dict[tuple[str, int], int] = {}
        for msg in batch:
            key = (msg.topic, msg.partition)
            offsets[key] = max(offsets.get(key, 0), msg.offset + 1)
        self.stats.batches += 1
        try:
            await self._source.commit(offsets)
        except Exception as exc:  # redelivery is harmless: schedule ids are deterministic
            self.stats.commit_failures += 1
            log.warning("offset commit failed (messages will be redelivered): %s", exc)

    async def _dead_letter(self, rejects: list[tuple[DelayedMessage, str]]) -> None:
        try:
            refused = await self._source.dead_letter(rejects)
        except Exception as exc:
            raise _StoreUnavailable(f"dead-letter topic: {exc}") from exc
        for msg, error in refused:  # even its bare note: logged, counted, and passed over
            self.stats.dead_letter_refused += 1
            log.error("%s: the dead-letter topic refused its dead letter (%s); skipped",
                      _where(msg), error)  # fmt: skip
        skipped = {id(msg) for msg, _ in refused}
        for msg, reason in rejects:
            if id(msg) in skipped:
                continue
            self.stats.dead_lettered += 1
            code = reason.split(":", 1)[0]
            self.stats.count(self.stats.dead_letter_reasons, code)
            if self._on_dead_letter is not None:
                self._on_dead_letter(code)
            log.warning("dead-lettered %s: %s", _where(msg), reason)

    def _ignore(self, msg: DelayedMessage, code: str, detail: str) -> None:
        """A message that changed nothing: counted by ``code`` and logged with why."""
        self.stats.count(self.stats.ignored_reasons, code)
        log.info("ignored %s (%s): %s", _where(msg), code, detail)

    async def _schedule(
        self, group: list[tuple[DelayedMessage, Any]], rejects: list[tuple[DelayedMessage, str]]
    ) -> None:
        if not group:
            return
        revisions = [
            kafka_revision(m.partition, m.offset, m.timestamp_ms, m.key, m.value, m.headers)
            for m, _ in group
        ]
        try:
            results = await self._scheduler.upsert_events(
                [ev for _, ev in group], revisions, source="kafka"
            )
            done = list(zip(group, results, strict=True))
        except Exception as exc:
            if is_unavailable(exc):
                raise _StoreUnavailable(str(exc)) from exc
            # The store refused the batch: find the event it refuses so the others are kept.
            done = []
            for (msg, event), revision in zip(group, revisions, strict=True):
                try:
                    [result] = await self._scheduler.upsert_events(
                        [event], [revision], source="kafka"
                    )
                    done.append(((msg, event), result))
                except Exception as one:
                    if is_unavailable(one):
                        raise _StoreUnavailable(str(one)) from one
                    rejects.append((msg, f"store_rejected: {one}"))
        for (msg, event), result in done:
            if result is Upserted.UNCHANGED:
                self.stats.duplicates += 1
                self._ignore(msg, "duplicate", f"schedule id {event.schedule_id!r} already has "
                             "this version or a newer one")  # fmt: skip
            elif result is Upserted.CREATED or result is Upserted.SCHEDULED_AGAIN:
                self.stats.scheduled += 1
            else:
                self.stats.replaced += 1

    async def _cancel(
        self, msg: DelayedMessage, schedule_id: str, rejects: list[tuple[DelayedMessage, str]]
    ) -> None:
        try:
            done = await self._scheduler.cancel_event(schedule_id)
        except InvalidEventError as exc:
            rejects.append((msg, f"invalid_event: {exc}"))
            return
        except Exception as exc:
            if is_unavailable(exc):
                raise _StoreUnavailable(str(exc)) from exc
            rejects.append((msg, f"store_rejected: {exc}"))
            return
        if done:
            self.stats.cancelled += 1
        else:
            self.stats.cancel_missed += 1
            self._ignore(msg, "cancel_missed", f"no pending event {schedule_id!r} to cancel "
                         "(unknown, fired or cancelled)")  # fmt: skip


def _where(msg: DelayedMessage) -> str:
    return f"{msg.topic}:{msg.partition}@{msg.offset}"

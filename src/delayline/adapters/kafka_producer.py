"""Publishing fired events with confluent-kafka's sync ``Producer`` and one poll thread.

confluent-kafka's ``AIOProducer`` cannot send headers, so one thread polls for delivery reports and
hands them, a batch per poll, to the event loop that awaits them: one future per ``publish``
call, resolved when its last report is in.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from delayline.domain.events import ScheduledEvent
from delayline.domain.outcomes import Delivery
from delayline.errors import ErrorClass, PublishError

log = logging.getLogger(__name__)

_UNAVAILABLE_CODES = frozenset(
    {
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._RESOLVE,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._FATAL,
        KafkaError._PURGE_QUEUE,
        KafkaError._PURGE_INFLIGHT,
        KafkaError._DESTROY,
    }
)
_TIMEOUT_CODES = frozenset(
    {KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError.REQUEST_TIMED_OUT}
)
_PERMANENT_CODES = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.INVALID_RECORD,
        KafkaError._INVALID_ARG,
        KafkaError.TOPIC_EXCEPTION,
    }
)


def classify_kafka_error(error: KafkaError) -> PublishError:
    """Turn a librdkafka error into a :class:`PublishError` with its class.

    A *fatal* error breaks the producer instance (e.g. ``UNKNOWN_PRODUCER_ID`` after a broker
    lost its state), not the event: it is ``UNAVAILABLE``, and the producer is rebuilt.
    """
    code = error.code()
    if code in _PERMANENT_CODES:
        kind = ErrorClass.PERMANENT
    elif code in _UNAVAILABLE_CODES or error.fatal():
        kind = ErrorClass.UNAVAILABLE
    else:
        kind = ErrorClass.TRANSIENT
    timed_out = code in _TIMEOUT_CODES
    return PublishError(f"{error.name()}: {error.str()}", kind, code, timed_out=timed_out)


def producer_config(
    bootstrap_servers: str, *, linger_ms: float, lease_seconds: float, extra: Mapping[str, str]
) -> dict[str, Any]:
    """librdkafka settings for firing: idempotent, acks=all, low linger, bounded timeout.

    ``message.timeout.ms`` stays below the claim lease so a message is either delivered or
    reported failed before another node may take the event over.
    """
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "linger.ms": linger_ms,
        "acks": "all",
        "enable.idempotence": True,
        "message.timeout.ms": max(1000, int(lease_seconds * 1000 * 0.6)),
        "socket.keepalive.enable": True,
        "queue.buffering.max.messages": 1_000_000,
    }
    config.update(extra)
    return config


class KafkaEventPublisher:
    """:class:`delayline.ports.EventPublisher` over one librdkafka producer."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._config = dict(config)
        self._producer: Any = None
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: list[_Pending] = []
        self._lock = threading.Lock()
        self._fatal = threading.Event()
        self.rebuilds = 0

    async def start(self) -> None:
        """Create the producer and its poll thread."""
        if self._producer is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._producer = self._new_producer()
        self._running.set()
        self._thread = threading.Thread(target=self._poll_forever, name="kafka-poll", daemon=True)
        self._thread.start()

    async def stop(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (up to ``timeout``), then stop the poll thread."""
        if self._producer is None:
            return
        remaining = await asyncio.to_thread(self._producer.flush, timeout)
        if remaining:
            log.warning("%d messages were still undelivered at shutdown", remaining)
        self._running.clear()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)
        self._producer = None

    async def __aenter__(self) -> KafkaEventPublisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _new_producer(self) -> Any:
        return Producer({**self._config, "error_cb": self._on_error})

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            log.error("Kafka producer fatal error: %s; rebuilding the producer", error)
            self._fatal.set()

    def _poll_forever(self) -> None:
        while self._running.is_set():
            try:
                self._producer.poll(0.05)
            except Exception as exc:  # the poll thread must survive anything
                log.error("Kafka producer poll failed: %s", exc)
                self._fatal.set()
            if self._fatal.is_set():
                self._rebuild()
            self._hand_over()

    def _rebuild(self) -> None:
        """Replace a broken producer; its queued messages are reported failed (unavailable),
        and the dispatcher retries them through the new one."""
        old, self._producer = self._producer, self._new_producer()
        self._fatal.clear()
        self.rebuilds += 1
        try:
            old.purge()
            old.poll(0)  # delivers the purge reports: every waiting future gets an error
            old.flush(0)
        except Exception as exc:
            log.warning("discarding the broken producer: %s", exc)

    def _hand_over(self) -> None:
        with self._lock:
            if not self._ready:
                return
            ready, self._ready = self._ready, []
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            self._loop.call_soon_threadsafe(_resolve_all, ready)

    def _settle(self, pending: _Pending, index: int, outcome: BaseException | Delivery) -> bool:
        """Record an outcome known at once; True when it was the call's last."""
        with self._lock:
            pending.outcomes[index] = outcome
            pending.left -= 1
            return pending.left == 0

    def _on_delivery(
        self, pending: _Pending, index: int, error: KafkaError | None, msg: Message
    ) -> None:
        # Runs on the poll thread (or a flushing one); a call's future is resolved once, by
        # the loop, when its last report is in: no future nor loop callback per message.
        outcome: BaseException | Delivery = (
            classify_kafka_error(error)
            if error is not None
            else Delivery(time.time(), msg.partition() or 0, msg.offset() or 0)
        )
        with self._lock:
            pending.outcomes[index] = outcome
            pending.left -= 1
            if pending.left == 0:
                self._ready.append(pending)

    async def publish(self, events: Sequence[ScheduledEvent]) -> list[BaseException | Delivery]:
        """Publish each event; per event its delivery report (wall time, partition, offset),
        or the error."""
        if self._producer is None:
            raise RuntimeError("publisher not started")
        if not events:
            return []
        pending = _Pending(asyncio.get_running_loop().create_future(), len(events))
        for index, event in enumerate(events):
            await self._produce(event, pending, index)
        return await pending.future

    async def _produce(self, event: ScheduledEvent, pending: _Pending, index: int) -> None:
        while True:
            try:
                self._producer.produce(
                    event.topic,
                    value=event.body,
                    key=event.message_key.encode(),
                    headers=event.outgoing_headers(),
                    on_delivery=functools.partial(self._on_delivery, pending, index),
                )
                return
            except BufferError:
                await asyncio.sleep(0.005)  # local queue full: let the poll thread drain it
            except KafkaException as exc:
                if self._settle(pending, index, classify_kafka_error(exc.args[0])):
                    _resolve_all([pending])  # on the loop already
                return

    async def ping(self, timeout: float = 2.0) -> bool:
        """True when the cluster's metadata can be read and the producer is usable."""
        if self._producer is None or self._fatal.is_set():
            return False
        try:
            await asyncio.to_thread(self._producer.list_topics, timeout=timeout)
        except KafkaException:
            return False
        return True


_NOT_YET = Delivery(0.0, -1, -1)
"""A placeholder outcome, replaced by each event's report before the call resolves."""


class _Pending:
    """One :meth:`KafkaEventPublisher.publish` call waiting for its delivery reports."""

    __slots__ = ("future", "left", "outcomes")

    def __init__(self, future: asyncio.Future[list[BaseException | Delivery]], size: int) -> None:
        self.future = future
        self.outcomes: list[BaseException | Delivery] = [_NOT_YET] * size
        self.left = size


def _resolve_all(ready: list[_Pending]) -> None:
    for pending in ready:
        if not pending.future.done():  # a cancelled publish just drops its reports
            pending.future.set_result(pending.outcomes)

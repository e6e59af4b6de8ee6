"""Publish delayed events from any service: ``get_event_bus().publish_with_delay(...)``.

A light module: it imports only ``confluent_kafka``, ``orjson``, the standard library and
Delayline's pure domain modules, so services can use it without pulling in Redis, ClickHouse or
the web stack. It produces one message to the delayed topic following the contract in
``docs/INGRESS.md`` (its header names live in :mod:`delayline.domain.wire`); the Delayline
consumer turns it into a scheduled event.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from delayline.domain.limits import due_after
from delayline.domain.wire import (
    CONTROL_HEADERS,
    H_ACTION,
    H_CORRELATION_ID,
    H_DELAY_SECONDS,
    H_ENTITY_TYPE,
    H_MAX_DELAY_SECONDS,
    H_PRIORITY,
    H_SCHEDULE_ID,
    H_SCHEDULED_AT,
    H_TOPIC,
)

ENV_BOOTSTRAP = "SCHEDULES_KAFKA_BOOTSTRAP_SERVERS"
ENV_DELAYED_TOPIC = "SCHEDULES_KAFKA_DELAYED_TOPIC_NAME"
DEFAULT_DELAYED_TOPIC = "delayed_events"


def new_schedule_id() -> str:
    """A fresh schedule id (128 random bits as 32 hex digits), chosen by the producer so that
    sending the same message again stores it once."""
    return uuid.uuid4().hex


def encode_body(body: object) -> bytes:
    """The message value: ``bytes`` as is, ``str`` as UTF-8, anything else as JSON."""
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    return orjson.dumps(body)


def build_delayed_message(
    *,
    topic: str,
    entity_type: str = "",
    action: str = "",
    body: object = "",
    delay_seconds: float | None = None,
    scheduled_at: datetime | str | int | None = None,
    correlation_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    priority: int | None = None,
    max_delay_seconds: int | None = None,
    schedule_id: str | None = None,
) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """``(key, value, headers)`` of the delayed-topic message for these fields.

    Exactly one of ``delay_seconds`` and ``scheduled_at`` (a datetime, ISO-8601 text or epoch
    milliseconds) must be given. Without ``schedule_id`` a new one is chosen: the message always
    names its event, so sending it again (a retry) stores it once. The key is the schedule id,
    so that a tombstone with the same key cancels the event.
    """
    if (delay_seconds is None) == (scheduled_at is None):
        raise ValueError("give exactly one of delay_seconds and scheduled_at")
    schedule_id = schedule_id or new_schedule_id()
    out: list[tuple[str, bytes]] = [(H_TOPIC, topic.encode())]
    if delay_seconds is not None:
        due_after(datetime.now(UTC), delay_seconds)  # refused here as the consumer would
        out.append((H_DELAY_SECONDS, repr(float(delay_seconds)).encode()))
    elif isinstance(scheduled_at, datetime):
        stamp = scheduled_at if scheduled_at.tzinfo else scheduled_at.replace(tzinfo=UTC)
        out.append((H_SCHEDULED_AT, stamp.isoformat().encode()))
    else:
        out.append((H_SCHEDULED_AT, str(scheduled_at).encode()))
    optional = (
        (H_ENTITY_TYPE, entity_type or None),
        (H_ACTION, action or None),
        (H_CORRELATION_ID, correlation_id),
        (H_PRIORITY, None if priority is None else str(int(priority))),
        (H_MAX_DELAY_SECONDS, None if max_delay_seconds is None else str(int(max_delay_seconds))),
        (H_SCHEDULE_ID, schedule_id),
    )
    out += [(name, value.encode()) for name, value in optional if value is not None]
    for name, value in (headers or {}).items():
        if name.lower() in CONTROL_HEADERS:
            raise ValueError(f"header {name!r} is reserved; use the keyword argument")
        out.append((name, value.encode()))
    return schedule_id.encode(), encode_body(body), out


class EventBus:
    """Produces delayed events to the delayed topic. Create one per process and reuse it.

    The sync ``Producer`` is used (the asyncio one cannot send headers) with one daemon thread
    serving delivery callbacks, which resolve asyncio futures on the caller's loop.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        delayed_topic: str = DEFAULT_DELAYED_TOPIC,
        *,
        producer_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.delayed_topic = delayed_topic
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "linger.ms": 1,  # librdkafka's default 5 ms adds straight to latency
            "enable.idempotence": False,
            "acks": "all",
        }
        config.update(producer_options or {})
        self._producer = Producer(config)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="delayline-event-bus", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.05)

    async def publish_with_delay(
        self,
        *,
        topic: str,
        entity_type: str = "",
        action: str = "",
        body: object = "",
        delay_seconds: float | None = None,
        scheduled_at: datetime | str | int | None = None,
        correlation_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        priority: int | None = None,
        max_delay_seconds: int | None = None,
        schedule_id: str | None = None,
    ) -> str:
        """Send one delayed event; returns its schedule id once the broker has the message.

        Without ``schedule_id`` a new one is chosen and sent with the message, so librdkafka's
        own retries never make a second event. To retry a failed call yourself, pass your own
        ``schedule_id`` (the same on every attempt).
        """
        if self._closed.is_set():
            raise RuntimeError("the event bus is closed")
        schedule_id = schedule_id or new_schedule_id()
        key, value, hdrs = build_delayed_message(
            topic=topic,
            entity_type=entity_type,
            action=action,
            body=body,
            delay_seconds=delay_seconds,
            scheduled_at=scheduled_at,
            correlation_id=correlation_id,
            headers=headers,
            priority=priority,
            max_delay_seconds=max_delay_seconds,
            schedule_id=schedule_id,
        )
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Message] = loop.create_future()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            loop.call_soon_threadsafe(_settle, done, err, msg)

        self._produce(key, value, hdrs, on_delivery)
        await done
        return schedule_id

    def _produce(self, key: bytes | None, value: bytes, hdrs: Any, cb: Any) -> None:
        while True:
            try:
                self._producer.produce(
                    self.delayed_topic, value=value, key=key, headers=hdrs, on_delivery=cb
                )
                return
            except BufferError:  # local queue full: let the poll thread drain it
                self._producer.poll(0.01)

    async def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (up to ``timeout`` seconds) and stop. Idempotent."""
        if self._closed.is_set():
            return
        await asyncio.to_thread(self._producer.flush, timeout)
        self._closed.set()
        await asyncio.to_thread(self._thread.join, 5)

    async def __aenter__(self) -> EventBus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _settle(fut: asyncio.Future[Message], err: KafkaError | None, msg: Message) -> None:
    if fut.done():
        return
    if err is not None:
        fut.set_exception(KafkaException(err))
    else:
        fut.set_result(msg)


def get_event_bus(
    bootstrap_servers: str | None = None, delayed_topic: str | None = None
) -> EventBus:
    """A new :class:`EventBus`; settings default to ``SCHEDULES_KAFKA_BOOTSTRAP_SERVERS`` and
    ``SCHEDULES_KAFKA_DELAYED_TOPIC_NAME``. Keep it for the life of the process; ``close()`` it.
    """
    servers = bootstrap_servers or os.environ.get(ENV_BOOTSTRAP)
    if not servers:
        raise ValueError(
            f"no Kafka bootstrap servers: pass bootstrap_servers or set {ENV_BOOTSTRAP}"
        )
    topic = delayed_topic or os.environ.get(ENV_DELAYED_TOPIC) or DEFAULT_DELAYED_TOPIC
    return EventBus(servers, topic)

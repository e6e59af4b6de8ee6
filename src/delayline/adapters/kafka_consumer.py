"""The delayed topic as a message source: a confluent-kafka ``Consumer`` in its own thread.

Every call on the consumer runs in one dedicated thread (librdkafka consumers are not meant to
be driven from several threads at once, and a blocking ``consume`` must not stall the event
loop). Offsets are committed only when the ingress service says so (``enable.auto.commit`` and
``enable.auto.offset.store`` are off). Dead letters go through a small sync ``Producer`` whose
``flush`` is awaited, so an offset is never committed before its dead letter is acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import orjson
from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from delayline.events_client import (
    H_DLQ_REASON,
    H_DLQ_SOURCE_OFFSET,
    H_DLQ_SOURCE_PARTITION,
    H_DLQ_SOURCE_TOPIC,
)
from delayline.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
_MAX_REASON_BYTES = 4096
_DLQ_VALUE_LIMIT = 900_000
"""Dead-letter values are cut to this many bytes: librdkafka's default ``message.max.bytes``
(1,000,000) must still fit the headers. A bigger original (a broker may accept one) would
otherwise never reach the dead-letter topic and block its partition."""
H_DLQ_TRUNCATED = "x-dlq-original-size"


@dataclass(frozen=True, slots=True)
class KafkaMessage:
    """One consumed record, copied out of librdkafka's ``Message``."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    timestamp_ms: int | None

    @classmethod
    def from_confluent(cls, msg: Message) -> KafkaMessage:
        """Copy the fields the ingress needs; header values stay raw bytes."""
        ts_type, ts = msg.timestamp()
        return cls(
            topic=msg.topic() or "",
            partition=msg.partition() or 0,
            offset=msg.offset() or 0,
            key=msg.key(),
            value=msg.value(),
            headers=tuple(_raw_headers(msg)),
            timestamp_ms=None if ts_type == TIMESTAMP_NOT_AVAILABLE else ts,
        )


def _raw_headers(msg: Message) -> list[tuple[str, bytes | None]]:
    raw = msg.headers() or []
    items = raw.items() if isinstance(raw, dict) else raw
    return [(k, v.encode() if isinstance(v, str) else v) for k, v in items]


class KafkaDelayedSource:
    """Consumes the delayed topic in a consumer group; implements the ingress ``MessageSource``.

    ``start()`` subscribes; ``poll`` returns batches; ``commit`` takes next-offsets per
    partition; ``pause``/``resume`` stop and restart fetching on every assigned partition
    (partitions assigned while paused are paused too); ``dead_letter`` produces and waits.
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        topic: str,
        group_id: str,
        dead_letter_topic: str,
        session_timeout_ms: int = 6000,
        fetch_wait_max_ms: int = 10,
        client_options: Mapping[str, Any] | None = None,
        dlq_timeout: float = 30.0,
    ) -> None:
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic
        self._dlq_timeout = dlq_timeout
        common: dict[str, Any] = {"bootstrap.servers": bootstrap_servers}
        common.update(client_options or {})
        self._consumer_config = {
            **common,
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": session_timeout_ms,
            # Tansu answers a waiting fetch only at its deadline (DESIGN.md): keep it short.
            "fetch.wait.max.ms": fetch_wait_max_ms,
            # No transactions here, and Tansu does not honour read_committed anyway.
            "isolation.level": "read_uncommitted",
            # librdkafka's statistics carry each partition's consumer lag (the lag gauge).
            "statistics.interval.ms": 5000,
            "stats_cb": self._on_stats,
        }
        self.lag: int | None = None
        """Messages behind the high watermark over the assigned partitions (None: unknown)."""
        self._producer_config = {
            **common,
            "linger.ms": 1,
            "acks": "all",
            "enable.idempotence": False,
        }
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._paused = False
        self._lock = threading.Lock()
        self._revoked: set[tuple[str, int]] = set()
        self._assigned: set[tuple[str, int]] = set()

    def _on_stats(self, raw: str) -> None:
        """librdkafka statistics (JSON): sum the known lags of this topic's partitions."""
        try:
            partitions = orjson.loads(raw)["topics"][self.topic]["partitions"]
        except (KeyError, ValueError, TypeError):
            return
        lags = [
            int(p["consumer_lag"])
            for name, p in partitions.items()
            if name != "-1" and int(p.get("consumer_lag", -1)) >= 0
        ]
        self.lag = sum(lags) if lags else None

    @classmethod
    def from_settings(cls, settings: Settings, bootstrap_servers: str) -> KafkaDelayedSource:
        """The source configured by ``SCHEDULES_KAFKA_*`` (``bootstrap_servers`` resolved by the
        composition root, which may have started the embedded broker)."""
        return cls(
            bootstrap_servers=bootstrap_servers,
            topic=settings.kafka_delayed_topic_name,
            group_id=settings.kafka_consumer_group,
            dead_letter_topic=settings.kafka_dead_letter_topic_name,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            client_options=settings.kafka_client_options,
        )

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError("the Kafka source is not started")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def start(self) -> None:
        """Create the consumer and producer and subscribe (the group join completes in poll)."""
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="delayline-kafka-consumer")
        await self._call(self._start_sync)

    def _start_sync(self) -> None:
        self._consumer = Consumer(self._consumer_config)
        self._producer = Producer(self._producer_config)
        self._consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self._lock:
            self._assigned |= {(tp.topic, tp.partition) for tp in partitions}
        log.info("assigned %s", [(tp.topic, tp.partition) for tp in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        with self._lock:
            self._assigned -= keys
            self._revoked |= keys
        log.info("revoked %s", sorted(keys))

    def take_revoked(self) -> set[tuple[str, int]]:
        """Partitions revoked since the last call (their held messages must be dropped)."""
        with self._lock:
            out, self._revoked = self._revoked, set()
        return out

    @property
    def assignment(self) -> frozenset[tuple[str, int]]:
        """The partitions this consumer owns now."""
        with self._lock:
            return frozenset(self._assigned)

    async def poll(self, max_messages: int, timeout: float) -> list[KafkaMessage]:
        """Up to ``max_messages`` records, waiting at most ``timeout`` seconds for the first."""
        return await self._call(self._poll_sync, max_messages, timeout)

    def _poll_sync(self, max_messages: int, timeout: float) -> list[KafkaMessage]:
        assert self._consumer is not None
        raw = self._consumer.consume(max_messages, timeout)
        if self._paused:  # partitions assigned during this call start paused too
            self._consumer.pause(self._consumer.assignment())
        out = []
        for msg in raw:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error on %s: %s", self.topic, err)
                continue
            out.append(KafkaMessage.from_confluent(msg))
        return out

    async def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Commit ``next offset`` per ``(topic, partition)``, synchronously."""
        if offsets:
            tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
            await self._call(partial(self._commit_sync, tps))

    def _commit_sync(self, tps: list[TopicPartition]) -> None:
        assert self._consumer is not None
        self._consumer.commit(offsets=tps, asynchronous=False)

    async def pause(self) -> None:
        """Stop fetching on every assigned partition (the group membership stays)."""
        self._paused = True
        await self._call(self._set_paused, True)

    async def resume(self) -> None:
        """Fetch again on every assigned partition."""
        self._paused = False
        await self._call(self._set_paused, False)

    def _set_paused(self, paused: bool) -> None:
        assert self._consumer is not None
        parts = self._consumer.assignment()
        if parts:
            (self._consumer.pause if paused else self._consumer.resume)(parts)

    @property
    def paused(self) -> bool:
        """Whether fetching is paused."""
        return self._paused

    async def dead_letter(self, items: Sequence[tuple[KafkaMessage, str]]) -> None:
        """Produce each message to the dead-letter topic with its reason; raise unless all
        were acknowledged."""
        if items:
            await self._call(self._dead_letter_sync, list(items))

    def _dead_letter_sync(self, items: list[tuple[KafkaMessage, str]]) -> None:
        assert self._producer is not None
        errors: list[KafkaError] = []

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                errors.append(err)

        for msg, reason in items:
            headers: list[tuple[str, str | bytes | None]] = [
                *msg.headers,
                (H_DLQ_REASON, reason.encode("utf-8", "replace")[:_MAX_REASON_BYTES]),
                (H_DLQ_SOURCE_TOPIC, msg.topic.encode()),
                (H_DLQ_SOURCE_PARTITION, str(msg.partition).encode()),
                (H_DLQ_SOURCE_OFFSET, str(msg.offset).encode()),
            ]
            value = msg.value
            if value is not None and len(value) > _DLQ_VALUE_LIMIT:
                headers.append((H_DLQ_TRUNCATED, str(len(value)).encode()))
                value = value[:_DLQ_VALUE_LIMIT]
            self._producer.produce(
                self.dead_letter_topic,
                key=msg.key,
                value=value,
                headers=headers,
                on_delivery=on_delivery,
            )
        left = self._producer.flush(self._dlq_timeout)
        if left or errors:
            detail = errors[0] if errors else f"{left} not delivered in {self._dlq_timeout} s"
            raise KafkaException(f"dead-letter topic {self.dead_letter_topic}: {detail}")

    async def stop(self) -> None:
        """Leave the group and close both clients (idempotent). Commits nothing by itself."""
        if self._executor is None:
            return
        try:
            await self._call(self._stop_sync)
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _stop_sync(self) -> None:
        if self._producer is not None:
            self._producer.flush(self._dlq_timeout)
            self._producer = None
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

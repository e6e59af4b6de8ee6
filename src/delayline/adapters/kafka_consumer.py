"""The delayed topic as a message source: a confluent-kafka ``Consumer`` in its own thread.

Every call on the consumer runs in one dedicated thread (librdkafka consumers are not meant to
be driven from several threads at once, and a blocking ``consume`` must not stall the event
loop). Offsets are committed only when the ingress service says so (``enable.auto.commit`` and
``enable.auto.offset.store`` are off). Dead letters go through a small sync ``Producer`` whose
``flush`` is awaited, so an offset is never committed before its dead letter is acknowledged.
Dead letters are cut to fit (``adapters.dead_letters``); one the broker refuses for what it is
goes again as its notes alone, and is reported rather than retried forever.
"""

from __future__ import annotations

import asyncio
import logging
import operator
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
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    ResourceType,
)

from delayline.adapters import dead_letters
from delayline.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
PRODUCER_MAX_MESSAGE_BYTES = 1_000_000
"""librdkafka's default ``message.max.bytes``."""
_PERMANENT = frozenset(
    {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_RECORD,
     KafkaError.INVALID_MSG, KafkaError.INVALID_MSG_SIZE, KafkaError.INVALID_TIMESTAMP}
)  # fmt: skip
"""Produce errors about the message itself: sending it again cannot succeed."""


_PRODUCER_ONLY = frozenset({"linger.ms", "acks", "enable.idempotence"})


def _permanent(err: KafkaError) -> bool:
    return err.code() in _PERMANENT


def _where(msg: KafkaMessage) -> str:
    return f"{msg.topic}:{msg.partition}@{msg.offset}"


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
    header_error: str | None = None
    """Why the headers could not be read (then ``headers`` is empty); None when they were."""

    @classmethod
    def from_confluent(cls, msg: Message) -> KafkaMessage:
        """Copy the fields the ingress needs; header values stay raw bytes."""
        ts_type, ts = msg.timestamp()
        headers, header_error = _raw_headers(msg)
        return cls(
            topic=msg.topic() or "",
            partition=msg.partition() or 0,
            offset=msg.offset() or 0,
            key=msg.key(),
            value=msg.value(),
            headers=headers,
            timestamp_ms=None if ts_type == TIMESTAMP_NOT_AVAILABLE else ts,
            header_error=header_error,
        )


def _raw_headers(msg: Message) -> tuple[tuple[tuple[str, bytes | None], ...], str | None]:
    """The headers, or ``((), why)`` when confluent-kafka cannot read them.

    confluent-kafka decodes every header key as UTF-8 and has no raw accessor: one key that is
    not UTF-8 makes ``headers()`` fail for the whole message, returning a broken list with the
    error still set. Called through ``methodcaller`` (a C-level call, which always turns that
    into a ``SystemError``; a hot ``msg.headers()`` call site may be specialised and let it
    surface later) and only once per message: the list it leaves behind must never be read.
    That costs this message its headers, nothing more.
    """
    try:
        raw = _READ_HEADERS(msg) or []
    except Exception as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, UnicodeDecodeError):
            return (), "a header key is not UTF-8"
        return (), f"the headers cannot be read ({type(exc).__name__})"
    items = raw.items() if isinstance(raw, dict) else raw
    return tuple((k, v.encode() if isinstance(v, str) else v) for k, v in items), None


_READ_HEADERS = operator.methodcaller("headers")


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
            # A broker may answer a waiting fetch only at its deadline (Tansu does): keep it short.
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
        self.max_message_bytes = int(common.get("message.max.bytes", PRODUCER_MAX_MESSAGE_BYTES))
        """The biggest dead letter the producer and the broker both take (set at start)."""
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
            client_options=settings.resolved_kafka_client_options,
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
        broker_limit = self._topic_max_message_bytes()
        if broker_limit is not None:
            self.max_message_bytes = min(self.max_message_bytes, broker_limit)
        # Batches of dead letters stay within what the broker takes, too.
        self._producer = Producer(
            {**self._producer_config, "message.max.bytes": self.max_message_bytes}
        )
        log.info("dead letters are cut to %d bytes", self.max_message_bytes)
        self._consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _topic_max_message_bytes(self) -> int | None:
        """The dead-letter topic's ``max.message.bytes`` if the broker tells (None: unknown)."""
        admin = AdminClient(
            {k: v for k, v in self._producer_config.items() if k not in _PRODUCER_ONLY}
        )
        resource = ConfigResource(ResourceType.TOPIC, self.dead_letter_topic)
        try:
            config = admin.describe_configs([resource])[resource].result(5)
            return int(config["max.message.bytes"].value)
        except Exception as exc:  # no such topic yet, not supported, ...: the producer's limit
            log.debug("max.message.bytes of %s unknown: %s", self.dead_letter_topic, exc)
            return None

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

    async def dead_letter(
        self, items: Sequence[tuple[KafkaMessage, str]]
    ) -> list[tuple[KafkaMessage, str]]:
        """Produce each message to the dead-letter topic with its reason, cut to fit.

        Returns the messages the broker refused for good even as a bare note (normally none),
        with the error; raises when the topic cannot be written now (retry later).
        """
        if not items:
            return []
        return await self._call(self._dead_letter_sync, list(items))

    def _dead_letter_sync(
        self, items: list[tuple[KafkaMessage, str]]
    ) -> list[tuple[KafkaMessage, str]]:
        letters = [dead_letters.build(msg, reason, self.max_message_bytes) for msg, reason in items]
        refused = self._produce_all(letters)
        if not refused:
            return []
        # Refused for what it is (its size…): send the bare note instead.
        retry = {i: dead_letters.minimal(*items[i]) for i in refused}
        again = self._produce_all(list(retry.values()))
        indexes = list(retry)
        for j, err in again.items():
            log.error("dead letter of %s refused for good: %s", _where(items[indexes[j]][0]), err)
        return [(items[indexes[j]][0], str(err)) for j, err in again.items()]

    def _produce_all(self, letters: list[dead_letters.DeadLetter]) -> dict[int, KafkaError]:
        """Produce and wait; returns the permanently refused ones by index; raises when any
        failed for a reason that may pass (broker down, topic missing, timeout)."""
        assert self._producer is not None
        refused: dict[int, KafkaError] = {}
        transient: list[KafkaError] = []

        def on_delivery(i: int) -> Callable[[KafkaError | None, Message], None]:
            def report(err: KafkaError | None, _msg: Message) -> None:
                if err is not None:
                    (refused.__setitem__(i, err) if _permanent(err) else transient.append(err))

            return report

        for i, letter in enumerate(letters):
            headers: list[tuple[str, str | bytes | None]] = list(letter.headers)
            try:
                self._producer.produce(
                    self.dead_letter_topic,
                    key=letter.key,
                    value=letter.value,
                    headers=headers,
                    on_delivery=on_delivery(i),
                )
            except KafkaException as exc:  # refused before sending (e.g. over the size limit)
                err = exc.args[0]
                if not (isinstance(err, KafkaError) and _permanent(err)):
                    raise
                refused[i] = err
        left = self._producer.flush(self._dlq_timeout)
        if left or transient:
            detail = transient[0] if transient else f"{left} not delivered in {self._dlq_timeout} s"
            raise KafkaException(f"dead-letter topic {self.dead_letter_topic}: {detail}")
        return refused

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

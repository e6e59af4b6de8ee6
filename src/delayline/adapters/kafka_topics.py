"""The Kafka topics Delayline owns: created with the configured layout, and kept present.

At start the delayed-events topic and its dead-letter topic are created if missing, with
``SCHEDULES_KAFKA_TOPIC_PARTITIONS`` partitions and ``SCHEDULES_KAFKA_TOPIC_REPLICATION_FACTOR``
replicas (-1: the broker's default). A topic that already exists is left as it is. While the
service runs, :meth:`KafkaTopics.keep_present` checks them periodically and creates any that
went missing: an in-memory broker (the embedded Tansu) that restarted has lost every topic, and
a consumer subscribed to a missing topic would wait forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

    from delayline.settings import Settings

log = logging.getLogger(__name__)

CHECK_INTERVAL_SECONDS = 5.0
"""How often :meth:`KafkaTopics.keep_present` looks for missing topics."""


class TopicCreationError(RuntimeError):
    """The broker refused to create a topic (for a reason other than it existing already)."""


class KafkaTopics:
    """Creates ``topics`` when missing, each with the same partitions and replication factor.

    Calls block on the network (the admin client is synchronous): call :meth:`ensure` from a
    thread, or use :meth:`ensure_async`.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topics: Sequence[str],
        *,
        partitions: int,
        replication_factor: int = -1,
        client_options: Mapping[str, str] | None = None,
        timeout_seconds: float = 10.0,
    ):
        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, not {partitions}")
        if replication_factor == 0 or replication_factor < -1:
            raise ValueError(
                f"replication_factor must be -1 (broker default) or at least 1, "
                f"not {replication_factor}"
            )
        self.bootstrap_servers = bootstrap_servers
        self.topics = tuple(topics)
        self.partitions = partitions
        self.replication_factor = replication_factor
        self._options: dict[str, str | int | float | bool] = {
            **(client_options or {}),
            "bootstrap.servers": bootstrap_servers,
        }
        self._timeout = timeout_seconds
        self._admin: AdminClient | None = None

    @classmethod
    def from_settings(cls, settings: Settings, bootstrap_servers: str) -> KafkaTopics:
        """The delayed-events topic and its dead-letter topic, laid out as configured."""
        return cls(
            bootstrap_servers,
            [settings.kafka_delayed_topic_name, settings.kafka_dead_letter_topic_name],
            partitions=settings.kafka_topic_partitions,
            replication_factor=settings.kafka_topic_replication_factor,
            client_options=settings.resolved_kafka_client_options,
        )

    def _admin_client(self) -> AdminClient:
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            self._admin = AdminClient(self._options)
        return self._admin

    def missing(self) -> list[str]:
        """The topics the broker does not have."""
        existing = self._admin_client().list_topics(timeout=self._timeout).topics
        return [topic for topic in self.topics if topic not in existing]

    def ensure(self) -> list[str]:
        """Create the missing topics; returns the names this call created."""
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

        missing = self.missing()
        if not missing:
            return []
        requests = [NewTopic(t, self.partitions, self.replication_factor) for t in missing]
        created = []
        for topic, future in self._admin_client().create_topics(requests).items():
            try:
                future.result(self._timeout)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if (
                    isinstance(error, KafkaError)
                    and error.code() == KafkaError.TOPIC_ALREADY_EXISTS
                ):
                    continue  # created meanwhile by another node: its layout stands
                raise TopicCreationError(f"could not create topic {topic!r}: {exc}") from exc
            log.info(
                "created topic %s (%d partitions, replication factor %s)",
                topic,
                self.partitions,
                "broker default" if self.replication_factor == -1 else self.replication_factor,
            )
            created.append(topic)
        return created

    async def ensure_async(self) -> list[str]:
        """:meth:`ensure` in a worker thread."""
        return await asyncio.to_thread(self.ensure)

    async def keep_present(
        self, stopping: asyncio.Event, interval: float = CHECK_INTERVAL_SECONDS
    ) -> None:
        """Until ``stopping`` is set, every ``interval`` seconds create any topic gone missing.

        A failed check (broker down, say) is logged and tried again at the next interval.
        """
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval)
            if stopping.is_set():
                return
            try:
                created = await self.ensure_async()
            except Exception as exc:  # the broker may be restarting: try again later
                log.debug("topic check failed: %s", exc)
                continue
            if created:
                log.warning("re-created missing topic(s) %s (the broker lost them)", created)

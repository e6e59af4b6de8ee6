"""A delayed-events consumer in its own process, for the SIGKILL test.

``python -m tests.integration.kafka.consumer_proc REDIS_URL PREFIX BOOTSTRAP TOPIC GROUP DLQ
STATE_DIR [--hang-before-commit]``. After each commit it writes ``STATE_DIR/committed.json``
(offsets and counters). With ``--hang-before-commit`` it stores the first batch, writes
``STATE_DIR/stored.json`` and then hangs instead of committing, waiting to be killed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path

from redis.asyncio import Redis

from delayline.adapters.kafka_consumer import KafkaDelayedSource
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.clock import SystemClock
from delayline.services.ingress import DelayedEventsConsumer
from delayline.services.scheduler import SchedulerService


class _ReportingSource(KafkaDelayedSource):
    """Writes the consumer's state around each commit; optionally never commits."""

    consumer: DelayedEventsConsumer

    def __init__(self, state_dir: Path, hang: bool, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.state_dir = state_dir
        self.hang = hang
        self.committed: dict[str, int] = {}

    def _write(self, name: str) -> None:
        doc = {"offsets": self.committed, "stats": self.consumer.stats.as_dict()}
        tmp = self.state_dir / f"{name}.tmp"
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.state_dir / f"{name}.json")

    async def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        if self.hang:
            self._write("stored")  # the events are in Redis; the offsets are not committed
            await asyncio.Event().wait()
        await super().commit(offsets)
        self.committed.update({f"{t}:{p}": o for (t, p), o in offsets.items()})
        self._write("committed")


async def _main(argv: list[str]) -> None:
    redis_url, prefix, bootstrap, topic, group, dlq, state_dir = argv[:7]
    hang = "--hang-before-commit" in argv
    redis = Redis.from_url(redis_url)
    store = RedisNearTermStore(redis, prefix=prefix, result_ttl_seconds=600)
    source = _ReportingSource(
        Path(state_dir),
        hang,
        bootstrap_servers=bootstrap,
        topic=topic,
        group_id=group,
        dead_letter_topic=dlq,
        session_timeout_ms=6000,
    )
    consumer = DelayedEventsConsumer(SchedulerService(store, SystemClock()), source)
    source.consumer = consumer
    async with consumer:
        await asyncio.Event().wait()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(_main(sys.argv[1:]))

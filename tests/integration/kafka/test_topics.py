"""The Kafka-topics adapter against the real broker: layout, idempotence, re-creation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from delayline.adapters.embedded import EmbeddedTansu, EmbeddedValkey
from delayline.adapters.kafka_topics import KafkaTopics
from delayline.bootstrap import Application
from delayline.settings import SettingsError, load_settings
from tests.support import create_topics


def partitions_of(bootstrap: str, *topics: str) -> dict[str, int]:
    """Partition count of each topic the broker has (missing topics are left out)."""
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    return {t: len(metadata.topics[t].partitions) for t in topics if t in metadata.topics}


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedTansu]:
    """A broker this test may kill and restart (on the same port)."""
    server = EmbeddedTansu(log_path=tmp_path / "tansu.log")
    server.start()
    yield server
    server.stop()


def test_missing_topics_are_created_with_the_configured_partitions(
    broker: EmbeddedTansu, unique: str
) -> None:
    names = [f"topics-{unique}-a", f"topics-{unique}-b"]
    topics = KafkaTopics(broker.bootstrap_servers, names, partitions=3)
    assert topics.ensure() == names
    assert partitions_of(broker.bootstrap_servers, *names) == {n: 3 for n in names}
    assert topics.ensure() == []  # present now: nothing to do


def test_an_existing_topic_keeps_its_layout(broker: EmbeddedTansu, unique: str) -> None:
    existing, new = f"topics-{unique}-old", f"topics-{unique}-new"
    create_topics(broker.bootstrap_servers, existing, partitions=2)
    topics = KafkaTopics(broker.bootstrap_servers, [existing, new], partitions=5)
    assert topics.ensure() == [new]
    assert partitions_of(broker.bootstrap_servers, existing, new) == {existing: 2, new: 5}


def test_layout_comes_from_the_settings(
    broker: EmbeddedTansu, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCHEDULES_KAFKA_TOPIC_PARTITIONS", "6")
    monkeypatch.setenv("SCHEDULES_KAFKA_TOPIC_REPLICATION_FACTOR", "1")
    monkeypatch.setenv("SCHEDULES_KAFKA_DELAYED_TOPIC_NAME", f"topics-{unique}-in")
    monkeypatch.setenv("SCHEDULES_KAFKA_DEAD_LETTER_TOPIC_NAME", f"topics-{unique}-dlq")
    settings = load_settings()
    topics = KafkaTopics.from_settings(settings, broker.bootstrap_servers)
    assert (topics.partitions, topics.replication_factor) == (6, 1)
    topics.ensure()
    assert partitions_of(broker.bootstrap_servers, *topics.topics) == {
        f"topics-{unique}-in": 6,
        f"topics-{unique}-dlq": 6,
    }


@pytest.mark.parametrize(
    ("variable", "value"),
    [("PARTITIONS", "0"), ("REPLICATION_FACTOR", "0"), ("REPLICATION_FACTOR", "-2")],
)
def test_invalid_layout_settings_are_refused(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"SCHEDULES_KAFKA_TOPIC_{variable}", value)
    with pytest.raises(SettingsError, match=f"SCHEDULES_KAFKA_TOPIC_{variable}"):
        load_settings()


async def test_topics_come_back_after_the_broker_lost_them(
    own_broker: EmbeddedTansu, unique: str
) -> None:
    names = [f"topics-{unique}-x", f"topics-{unique}-y"]
    topics = KafkaTopics(own_broker.bootstrap_servers, names, partitions=2)
    await topics.ensure_async()
    stopping = asyncio.Event()
    task = asyncio.create_task(topics.keep_present(stopping, interval=0.2))
    try:
        await asyncio.to_thread(own_broker.kill)
        await asyncio.to_thread(own_broker.start)  # in-memory: it starts with no topics
        deadline = time.monotonic() + 60
        while partitions_of(own_broker.bootstrap_servers, *names) != {n: 2 for n in names}:
            assert time.monotonic() < deadline, "the topics were not re-created"
            await asyncio.sleep(0.2)
    finally:
        stopping.set()
        await asyncio.wait_for(task, 30)


async def test_the_service_creates_its_topics_and_keeps_them(
    own_broker: EmbeddedTansu,
    valkey: EmbeddedValkey,
    clickhouse_dsn: str,
    clickhouse_root: object,  # the session's engine stays open: this app shares its folder
    unique: str,
    tmp_path: Path,
) -> None:
    names = [f"topics-{unique}-svc", f"topics-{unique}-svc.dlq"]
    settings = load_settings(
        redis_url=valkey.url,
        redis_key_prefix=f"topics-{unique}",
        kafka_bootstrap_servers=own_broker.bootstrap_servers,
        kafka_delayed_topic_name=names[0],
        kafka_dead_letter_topic_name=names[1],
        kafka_topic_partitions=3,
        clickhouse_dsn=clickhouse_dsn,
        clickhouse_database=f"topics_{unique}",
        data_dir=tmp_path,
    )
    app = Application(settings, roles={"schedule", "ingest"})
    await app.start()
    try:
        assert partitions_of(own_broker.bootstrap_servers, *names) == {n: 3 for n in names}
        await asyncio.to_thread(own_broker.kill)
        await asyncio.to_thread(own_broker.start)
        deadline = time.monotonic() + 60
        while partitions_of(own_broker.bootstrap_servers, *names) != {n: 3 for n in names}:
            assert time.monotonic() < deadline, "the service did not re-create its topics"
            await asyncio.sleep(0.5)
    finally:
        await app.stop()

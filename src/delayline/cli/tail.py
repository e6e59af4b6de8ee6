"""``delayline tail``: print events as they fire, read straight from Kafka."""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import Annotated, Any

import typer

from delayline.bootstrap import read_runtime_file
from delayline.cli.common import err, settings_or_exit
from delayline.domain.events import body_view


def tail(
    topic: Annotated[str, typer.Argument(help="Topic to watch.")],
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers.")] = None,
    from_beginning: Annotated[bool, typer.Option(help="Also print earlier messages.")] = False,
) -> None:
    """Print events as they fire, with their lateness (from the message's produce time)."""
    from confluent_kafka import Consumer

    settings = settings_or_exit()
    servers = (
        bootstrap
        or settings.kafka_bootstrap_servers
        or read_runtime_file(settings.data_dir).get("bootstrap_servers")
    )
    if not servers:
        err.print("[red]no broker: set SCHEDULES_KAFKA_BOOTSTRAP_SERVERS or run `delayline serve`")
        raise typer.Exit(1)
    from delayline.adapters.kafka_topics import KafkaTopics

    KafkaTopics(  # so the first event is seen
        servers,
        [topic],
        partitions=settings.kafka_topic_partitions,
        replication_factor=settings.kafka_topic_replication_factor,
        client_options=settings.resolved_kafka_client_options,
    ).ensure()
    consumer = Consumer(
        {
            **settings.resolved_kafka_client_options,
            "bootstrap.servers": servers,
            "topic.metadata.refresh.interval.ms": 2000,
            "group.id": f"delayline-tail-{os.getpid()}",
            # Read from the start and skip what came before us: the embedded broker answers
            # "latest" offsets wrongly.
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    started_ms = 0 if from_beginning else int(time.time() * 1000)
    print(f"watching {topic} on {servers} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() or msg.timestamp()[1] < started_ms:
                continue
            _print_fired(msg, time.time())
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()


def _print_fired(msg: Any, read_at: float) -> None:
    headers = {k: (v or b"").decode(errors="replace") for k, v in msg.headers() or []}
    due = headers.get("x-scheduled-at")
    produced_ms = msg.timestamp()[1]
    late = ""
    if due:
        due_s = datetime.fromisoformat(due).timestamp()
        late = f"fired {produced_ms / 1000 - due_s:+.3f}s  read {read_at - due_s:+.3f}s"
    print(  # plain print: no markup interpretation of message contents, easy to grep
        f"{datetime.fromtimestamp(read_at).isoformat(timespec='milliseconds')}  "
        f"{headers.get('x-schedule-id', '?')}  {late}  key={msg.key()!r}  "
        f"{readable_body(msg.value() or b'')}",
        flush=True,
    )


def readable_body(value: bytes, limit: int = 200) -> str:
    """A fired value on one line: UTF-8 text quoted (``repr``), other bytes as ``base64:…``
    (as the HTTP API shows them); at most ``limit`` characters of either, then ``…``."""
    text, encoding = body_view(value)
    shown = repr(text[:limit]) if encoding == "utf-8" else f"base64:{text[:limit]}"
    return shown + ("…" if len(text) > limit else "")

"""The Kafka wire contract shared by producers (``delayline.events_client``) and the ingress
parser: header names, the envelope's content type and the schedule id of a message naming none.

Pure: the standard library only, so the parser needs no Kafka client. ``docs/INGRESS.md``
describes the contract.
"""

from __future__ import annotations

import hashlib

H_TOPIC = "x-topic"
H_DELAY_SECONDS = "x-delay-seconds"
H_SCHEDULED_AT = "x-scheduled-at"
H_ENTITY_TYPE = "x-entity-type"
H_ACTION = "x-action"
H_CORRELATION_ID = "x-correlation-id"
H_PRIORITY = "x-priority"
H_MAX_DELAY_SECONDS = "x-max-delay-seconds"
H_SCHEDULE_ID = "x-schedule-id"
H_CONTENT_TYPE = "content-type"
ENVELOPE_CONTENT_TYPE = "application/vnd.delayline.envelope+json"
# The etf1 kafka-message-scheduler's headers (its users can switch without touching producers).
H_ETF1_EPOCH = "scheduler-epoch"
H_ETF1_TARGET_TOPIC = "scheduler-target-topic"
H_ETF1_TARGET_KEY = "scheduler-target-key"
# Added to dead-lettered messages.
H_DLQ_REASON = "x-dlq-reason"
H_DLQ_SOURCE_TOPIC = "x-dlq-source-topic"
H_DLQ_SOURCE_PARTITION = "x-dlq-source-partition"
H_DLQ_SOURCE_OFFSET = "x-dlq-source-offset"

CONTROL_HEADERS = frozenset(
    {
        H_TOPIC,
        H_DELAY_SECONDS,
        H_SCHEDULED_AT,
        H_ENTITY_TYPE,
        H_ACTION,
        H_CORRELATION_ID,
        H_PRIORITY,
        H_MAX_DELAY_SECONDS,
        H_SCHEDULE_ID,
    }
)
ETF1_HEADERS = frozenset({H_ETF1_EPOCH, H_ETF1_TARGET_TOPIC, H_ETF1_TARGET_KEY})

_MAX_READABLE_ID = 200


def derive_schedule_id(topic: str, partition: int, offset: int, timestamp_ms: int) -> str:
    """The schedule id of a message that names none: the same for every redelivery.

    The timestamp is part of it so that a topic deleted and re-created (offsets restart at 0,
    e.g. after a restart of the in-memory embedded broker) never collides with older events.
    """
    readable = f"{topic}:{partition}:{offset}:{timestamp_ms}"
    if len(readable) <= _MAX_READABLE_ID:
        return readable
    return "k" + hashlib.sha256(readable.encode()).hexdigest()[:40]

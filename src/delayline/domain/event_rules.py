"""What every ingress accepts beyond each field's own format: allowed topics, and the size of
the Kafka record an event fires as. Pure: no I/O."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING

from delayline.domain.event_errors import InvalidEventError, OversizeEventError
from delayline.domain.event_fields import RESERVED_HEADERS

if TYPE_CHECKING:
    from delayline.domain.events import ScheduledEvent

DEFAULT_MAX_MESSAGE_BYTES = 1_000_000
"""librdkafka's default ``message.max.bytes``: the largest record the producer will send."""
RECORD_OVERHEAD_BYTES = 36
"""The most a Kafka v2 record adds to its key, value and headers (length, attributes,
timestamp and offset deltas, key/value lengths, header count: librdkafka's bound)."""
HEADER_OVERHEAD_BYTES = 10
"""The most one record header adds to its name and value (two varint lengths)."""


@dataclass(frozen=True, slots=True)
class EventRules:
    """What every ingress accepts beyond each field's own type and format.

    ``max_message_bytes``: the producer's ``message.max.bytes``; an event whose fired message
    (key, body, headers and record overhead) could exceed it is refused, never accepted and then
    failed at fire time. ``own_topics``: Delayline's own topics (delayed, dead-letter), which
    events may not target, like Kafka's internal ``__``-prefixed ones. ``allowed_topics``: when
    not empty, the topic must match one of these glob patterns (``user.*``).
    """

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    own_topics: frozenset[str] = frozenset()
    allowed_topics: tuple[str, ...] = ()

    def check_topic(self, topic: str) -> None:
        """Raise :class:`InvalidEventError` for a topic events may not target."""
        if topic.startswith("__"):
            raise InvalidEventError("topic", f"{topic!r} is an internal Kafka topic")
        if topic in self.own_topics:
            raise InvalidEventError("topic", f"{topic!r} is one of Delayline's own topics")
        if self.allowed_topics and not any(
            fnmatch.fnmatchcase(topic, pattern) for pattern in self.allowed_topics
        ):
            raise InvalidEventError(
                "topic", f"{topic!r} is not in the allowed topics {list(self.allowed_topics)}"
            )

    def check_size(self, event: ScheduledEvent) -> None:
        """Raise :class:`OversizeEventError` if ``event`` could not be produced as one record."""
        if _size_bound(event) <= self.max_message_bytes:
            return  # surely fits: skip the exact count (the common case, on the bulk path)
        size = message_size(event)
        if size > self.max_message_bytes:
            raise OversizeEventError(
                "body",
                f"the event would be a {size}-byte Kafka message (body, key and headers); "
                f"the producer's limit (message.max.bytes) is {self.max_message_bytes}",
            )


DEFAULT_EVENT_RULES = EventRules()


def _byte_len(value: str | bytes) -> int:
    return len(value) if isinstance(value, bytes) else len(value.encode("utf-8"))


def _size_bound(event: ScheduledEvent) -> int:
    """An upper bound of :func:`message_size` from character counts (4 bytes each at most)."""
    text = (
        len(event.body)
        + len(event.message_key)
        + len(event.schedule_id)
        + len(event.correlation_id)
        + len(event.entity_type)
        + len(event.action)
        + sum(len(k) + len(v) for k, v in event.headers.items())
    )
    fixed = RECORD_OVERHEAD_BYTES + (len(event.headers) + len(RESERVED_HEADERS)) * (
        HEADER_OVERHEAD_BYTES + 16
    )
    return 4 * text + fixed + 64  # 64: the x-scheduled-at value


def message_size(event: ScheduledEvent) -> int:
    """The most bytes the fired record of ``event`` takes against ``message.max.bytes``."""
    headers = sum(
        HEADER_OVERHEAD_BYTES + _byte_len(name) + len(value)
        for name, value in event.outgoing_headers()
    )
    return RECORD_OVERHEAD_BYTES + _byte_len(event.message_key) + _byte_len(event.body) + headers

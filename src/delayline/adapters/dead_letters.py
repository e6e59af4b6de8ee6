"""What a dead letter carries, cut so that it always fits the broker. Pure: no I/O.

A rejected message goes to the dead-letter topic with its original key, value and headers plus
``x-dlq-*`` notes. The original may be bigger than what can be produced (a broker may accept
more than a producer can send, and the notes add bytes): key, value and headers are then cut
to share the budget, small parts kept whole first, and ``x-dlq-original-sizes`` records what
they were. A dead letter that does not fit would block its partition for good.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from delayline.domain.wire import (
    H_DLQ_REASON,
    H_DLQ_SOURCE_OFFSET,
    H_DLQ_SOURCE_PARTITION,
    H_DLQ_SOURCE_TOPIC,
)
from delayline.ports import DelayedMessage

H_DLQ_ORIGINAL_SIZES = "x-dlq-original-sizes"
H_DLQ_UNREADABLE_HEADERS = "x-dlq-unreadable-headers"
MAX_REASON_BYTES = 4096
RECORD_OVERHEAD_BYTES = 1024
"""Room left for the record batch header (61 bytes) and the record's own framing."""
HEADER_FRAMING_BYTES = 10
"""Counted per header for its two length prefixes (varints)."""
SIZES_NOTE_BYTES = 160
"""Room kept for the ``x-dlq-original-sizes`` note itself."""

Header = tuple[str, bytes | None]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message for the dead-letter topic."""

    key: bytes | None
    value: bytes | None
    headers: list[Header]

    @property
    def size(self) -> int:
        """Key, value and headers in bytes, headers with their framing."""
        return _len(self.key) + _len(self.value) + headers_size(self.headers)


def _len(data: bytes | None) -> int:
    return 0 if data is None else len(data)


def header_size(header: Header) -> int:
    """Bytes one header takes in a record."""
    name, value = header
    return len(name.encode()) + _len(value) + HEADER_FRAMING_BYTES


def headers_size(headers: Sequence[Header]) -> int:
    """Bytes the headers take in a record."""
    return sum(header_size(h) for h in headers)


def notes(msg: DelayedMessage, reason: str) -> list[Header]:
    """The ``x-dlq-*`` headers: the reason, where the message came from, unreadable headers."""
    out: list[Header] = [
        (H_DLQ_REASON, reason.encode("utf-8", "replace")[:MAX_REASON_BYTES]),
        (H_DLQ_SOURCE_TOPIC, msg.topic.encode()),
        (H_DLQ_SOURCE_PARTITION, str(msg.partition).encode()),
        (H_DLQ_SOURCE_OFFSET, str(msg.offset).encode()),
    ]
    if msg.header_error is not None:
        note = f"{msg.header_error}; the original headers could not be read and are not included"
        out.append((H_DLQ_UNREADABLE_HEADERS, note.encode()))
    return out


def fair_shares(sizes: dict[str, int], budget: int) -> dict[str, int]:
    """Split ``budget`` bytes among parts: the smallest are kept whole, the rest cut equally."""
    out: dict[str, int] = {}
    left = max(budget, 0)
    ordered = sorted(sizes.items(), key=lambda item: item[1])
    for i, (name, size) in enumerate(ordered):
        out[name] = min(size, left // (len(ordered) - i))
        left -= out[name]
    return out


def _keep_headers(headers: Sequence[Header], budget: int) -> list[Header]:
    kept: list[Header] = []
    for header in headers:
        budget -= header_size(header)
        if budget < 0:
            break
        kept.append(header)
    return kept


def build(msg: DelayedMessage, reason: str, max_message_bytes: int) -> DeadLetter:
    """The dead letter of ``msg``: the original with its notes, cut to ``max_message_bytes``."""
    own = notes(msg, reason)
    whole = DeadLetter(msg.key, msg.value, [*msg.headers, *own])
    budget = max_message_bytes - RECORD_OVERHEAD_BYTES
    if whole.size <= budget:
        return whole
    sizes = {"key": _len(msg.key), "value": _len(msg.value), "headers": headers_size(msg.headers)}
    shares = fair_shares(sizes, budget - headers_size(own) - SIZES_NOTE_BYTES)
    key = None if msg.key is None else msg.key[: shares["key"]]
    value = None if msg.value is None else msg.value[: shares["value"]]
    headers = _keep_headers(msg.headers, shares["headers"])
    note = (
        f"key={sizes['key']};value={sizes['value']};headers={sizes['headers']};"
        f"headers_kept={len(headers)}/{len(msg.headers)}"
    )
    return DeadLetter(key, value, [*headers, *own, (H_DLQ_ORIGINAL_SIZES, note.encode())])


def minimal(msg: DelayedMessage, reason: str) -> DeadLetter:
    """The dead letter without the original's key, value and headers: only the notes and the
    original sizes (the last resort when the broker refuses the full one for its size)."""
    note = (
        f"key={_len(msg.key)};value={_len(msg.value)};headers={headers_size(msg.headers)};"
        f"headers_kept=0/{len(msg.headers)}"
    )
    return DeadLetter(None, b"", [*notes(msg, reason), (H_DLQ_ORIGINAL_SIZES, note.encode())])

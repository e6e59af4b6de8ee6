"""Where the near-term tier keeps things in Redis: the shards, their keys, the stored values.

The tier is split into a fixed number of virtual shards (``SCHEDULES_REDIS_SHARDS``). Shard
``k`` of ``n`` lives under its own hash tag, ``{<prefix>:<k>}`` (``{<prefix>}`` when ``n`` is
1), so all the keys one script touches sit in one Cluster slot; different shards hash to
different slots and so spread over a Cluster's masters. An event's shard is
:func:`shard_of` its ``schedule_id``. Keys that are not per shard (the shard-count record,
locks) live under the control tag ``{<prefix>:ctl}``.

Key layout of one shard (``{t}`` its tag):

- ``{t}:due``      ZSET  score = due time (epoch µs), member = 21-byte prefix + id: 8 hex
                         digits of ``2**31 - 1 - priority``, 12 of the submission sequence, ':'
- ``{t}:payload``  HASH  id → member prefix + compact JSON + raw body (``domain.codec``); the
                         JSON starts with ``"r"``, the revision, when the event has one
                         (one hash: ~35 % less memory than a hash per event)
- ``{t}:seq``      STRING the submission sequence (INCR by the scripts that add events)
- ``{t}:next``     HASH  id → due score, priority part and value of a newer version that came
                         while the id was being fired; the ack, retry or reap that ends the
                         firing puts it in the due set
- ``{t}:inflight`` ZSET  id → lease deadline (epoch µs)
- ``{t}:leases``   HASH  id → claim token: the fence for acks (a reaped event is due at once)
- ``{t}:counts``   HASH  status → total
- ``{t}:results:<n>`` HASH id → ``status|epoch µs|revision|reason``, one hash per
                         ``result_ttl_seconds`` of time: an outcome is remembered between one
                         and two TTLs (one EXPIRE per bucket, not one key per event)
- ``{t}:parked``   HASH  id → reason + newline + stored value of an event whose payload the
                         key ring could not open when it was claimed (encryption at rest)

One channel for every shard, ``{<prefix>}:wake``, carries the due time of an event that
became the earliest of its shard (on a Cluster, PUBLISH reaches every node's subscribers).

Among equal due times the member prefix makes higher priorities sort (and fire) first, then
earlier submissions (the sequence is taken in the schedule script, so a bulk call keeps its
order). Revisions tell a redelivered or older version from a newer one (``lua/_revision.lua``,
docs/INGRESS.md).
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass

from delayline.domain.codec import PayloadSealer, encode_event
from delayline.domain.events import EventStatus, ScheduledEvent, from_epoch_us

_PRIORITY_OFFSET = 2**31 - 1
PREFIX_LEN = 21
"""Bytes of the member prefix every stored value starts with."""
PRIORITY_PART_LEN = 8
"""Bytes of the prefix's priority part (a ``next`` value keeps only this part)."""


def shard_of(schedule_id: str, shards: int) -> int:
    """The shard of an event: CRC-32 of its UTF-8 ``schedule_id``, modulo the shard count.

    Stable across processes, versions and machines (unlike Python's ``hash``), and the only
    place that decides it: get, cancel, reschedule and upsert go straight to this shard.
    """
    return zlib.crc32(schedule_id.encode()) % shards if shards > 1 else 0


def shard_tag(prefix: str, shard: int, shards: int) -> str:
    """The hash tag of shard ``shard`` of ``shards``: ``{prefix}`` alone when there is one."""
    return "{" + prefix + "}" if shards == 1 else "{" + f"{prefix}:{shard}" + "}"


def control_tag(prefix: str) -> str:
    """The hash tag of the keys that are not per shard (shard-count record, locks)."""
    return "{" + prefix + ":ctl}"


def wake_channel(prefix: str) -> str:
    """The wake-up channel shared by every shard."""
    return "{" + prefix + "}:wake"


@dataclass(frozen=True, slots=True)
class ShardKeys:
    """The key names of one shard (see the module docstring)."""

    tag: str
    channel: str

    @property
    def due(self) -> str:
        return f"{self.tag}:due"

    @property
    def payload(self) -> str:
        return f"{self.tag}:payload"

    @property
    def inflight(self) -> str:
        return f"{self.tag}:inflight"

    @property
    def leases(self) -> str:
        return f"{self.tag}:leases"

    @property
    def counts(self) -> str:
        return f"{self.tag}:counts"

    @property
    def parked(self) -> str:
        return f"{self.tag}:parked"

    @property
    def seq(self) -> str:
        return f"{self.tag}:seq"

    @property
    def next(self) -> str:
        return f"{self.tag}:next"

    @property
    def results_pattern(self) -> str:
        return f"{self.tag}:results:*"

    def result_buckets(self, ttl_seconds: int) -> tuple[str, str]:
        """The current and the previous results hash (outcomes are looked up in both)."""
        bucket = int(time.time()) // max(1, ttl_seconds)
        return f"{self.tag}:results:{bucket}", f"{self.tag}:results:{bucket - 1}"

    def fixed(self) -> list[str]:
        """Every key of the shard but the results buckets."""
        return [
            self.due,
            self.payload,
            self.inflight,
            self.leases,
            self.counts,
            self.seq,
            self.next,
            self.parked,
        ]


def priority_part(priority: int) -> str:
    """The member prefix's first part: among equal scores, higher priority sorts first."""
    return f"{_PRIORITY_OFFSET - priority:0{PRIORITY_PART_LEN}x}"


def stored_body(
    event: ScheduledEvent, revision: str = "", sealer: PayloadSealer | None = None
) -> bytes:
    """The payload hash value without its member prefix (the scripts add it): the codec's
    bytes (headers and body sealed with ``sealer``), with ``revision`` as the JSON's first
    field when there is one."""
    encoded = encode_event(event, sealer)
    if not revision:
        return encoded
    return b'{"r":"' + revision.encode() + b'",' + encoded[1:]


def codec_bytes(value: bytes) -> bytes:
    """A stored value without its member prefix."""
    return value[PREFIX_LEN:]


def finished_stub(schedule_id: str, result: bytes) -> ScheduledEvent:
    """What Redis remembers of a finished event: its status, when and why (no payload: the
    record comes from the lifecycle history; the topic stays empty to say so)."""
    status, at_us, _revision, reason = result.decode().split("|", 3)
    at = from_epoch_us(int(at_us or 0))
    return ScheduledEvent(
        schedule_id=schedule_id,
        topic="",
        entity_type="",
        action="",
        body=b"",
        correlation_id="",
        headers={},
        scheduled_at=at,
        status=EventStatus(status),
        created_at=at,
        updated_at=at,
        last_error=reason or None,
    )

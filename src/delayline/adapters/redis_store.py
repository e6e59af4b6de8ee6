"""The near-term tier on Redis/Valkey: a due-time sorted set driven by atomic Lua scripts.

Key layout (every key shares the hash tag ``{prefix}``, so one script's keys sit in one
Cluster slot; the tag is the unit of sharding):

- ``{p}:due``      ZSET  score = due time (epoch µs), member = 21-byte prefix + id: 8 hex
                         digits of ``2**31 - 1 - priority``, 12 of the submission sequence, ':'
- ``{p}:payload``  HASH  id → member prefix + compact JSON + raw body (``domain.codec``); the
                         JSON starts with ``"r"``, the revision, when the event has one
                         (one hash: ~35 % less memory than a hash per event)
- ``{p}:seq``      STRING the submission sequence (INCR by the scripts that add events)
- ``{p}:next``     HASH  id → due score, priority part and value of a newer version that came
                         while the id was being fired; the ack, retry or reap that ends the
                         firing puts it in the due set
- ``{p}:inflight`` ZSET  id → lease deadline (epoch µs)
- ``{p}:leases``   HASH  id → claim token: the fence for acks (a reaped event is due at once)
- ``{p}:counts``   HASH  status → total
- ``{p}:results:<n>`` HASH id → ``status|epoch µs|revision|reason``, one hash per
                         ``result_ttl_seconds`` of time: an outcome is remembered between one
                         and two TTLs (one EXPIRE per bucket, not one key per event)
- ``{p}:parked``   HASH  id → reason + newline + stored value of an event whose payload the
                         key ring could not open when it was claimed (encryption at rest)
- channel ``{p}:wake`` carries the due time of an event that became the earliest.

Among equal due times the member prefix makes higher priorities sort (and fire) first, then
earlier submissions (the sequence is taken in the schedule script, so a bulk call keeps its
order). Revisions tell a redelivered or older version from a newer one (``lua/_revision.lua``,
docs/INGRESS.md).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from delayline.adapters.encryption import PayloadCipher, RekeyPage
from delayline.domain.codec import (
    PayloadSealer,
    UndecryptablePayload,
    decode_event,
    decode_unopened,
    encode_event,
    reseal,
    sealed_part,
    with_due,
)
from delayline.domain.events import EventStatus, ScheduledEvent, from_epoch_us
from delayline.ports import Claim, Finished

log = logging.getLogger(__name__)

_PRIORITY_OFFSET = 2**31 - 1
_PREFIX_LEN = 21
SCHEDULE_CHUNK = 500
"""Events per schedule script: bounds how long one call blocks the server."""


def priority_part(priority: int) -> str:
    """The member prefix's first part: among equal scores, higher priority sorts first."""
    return f"{_PRIORITY_OFFSET - priority:08x}"


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


def _codec_bytes(value: bytes) -> bytes:
    return value[_PREFIX_LEN:]


def _load_script(name: str) -> str:
    """A script with the shared helpers (value layout, revisions) prepended."""
    lua = resources.files("delayline.adapters").joinpath("lua")
    helpers = (lua.joinpath(f"_{n}.lua").read_text() for n in ("member_of", "revision"))
    return "".join(helpers) + lua.joinpath(f"{name}.lua").read_text()


class RedisNearTermStore:
    """:class:`delayline.ports.NearTermStore` on one Redis/Valkey (or one Cluster slot)."""

    def __init__(
        self,
        client: Redis,
        prefix: str = "delayline",
        result_ttl_seconds: int = 3600,
        cipher: PayloadCipher | None = None,
    ):
        self._redis = client
        self._cipher = cipher
        tag = "{" + prefix + "}"
        self._tag = tag
        self.due_key = f"{tag}:due"
        self.payload_key = f"{tag}:payload"
        self.inflight_key = f"{tag}:inflight"
        self.leases_key = f"{tag}:leases"
        self.counts_key = f"{tag}:counts"
        self.parked_key = f"{tag}:parked"
        self.seq_key = f"{tag}:seq"
        self.next_key = f"{tag}:next"
        self.channel = f"{tag}:wake"
        self._result_ttl = result_ttl_seconds
        self._scripts: dict[str, AsyncScript] = {
            name: client.register_script(_load_script(name))
            for name in (
                "schedule",
                "upsert",
                "claim",
                "ack",
                "retry",
                "cancel",
                "reschedule",
                "reap",
                "get",
                "discard",
                "orphans",
                "park",
                "rekey",
                "unpark",
            )
        }

    def result_buckets(self) -> tuple[str, str]:
        """The current and the previous results hash (outcomes are looked up in both)."""
        bucket = int(time.time()) // max(1, self._result_ttl)
        return f"{self._tag}:results:{bucket}", f"{self._tag}:results:{bucket - 1}"

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self._scripts[name](keys=list(keys), args=list(args))

    async def ping(self) -> bool:
        """True when the server answers."""
        return bool(await self._redis.ping())

    async def schedule(self, events: Sequence[ScheduledEvent]) -> list[bool]:
        """Insert-if-absent for every event; True where inserted.

        Atomic per chunk of ``SCHEDULE_CHUNK`` events: a script blocks the server while it
        runs, and a 10k-event one would stall every dispatcher for most of a second. After an
        error, earlier chunks are stored; retrying the call is safe (insert-if-absent).
        """
        chunks = [events[i : i + SCHEDULE_CHUNK] for i in range(0, len(events), SCHEDULE_CHUNK)]
        if len(chunks) <= 1:
            return [bool(x) for x in await self._run("schedule", *self._schedule_call(events))]
        # One round trip for all chunks; other clients' commands run between them.
        async with self._redis.pipeline(transaction=False) as pipe:
            for chunk in chunks:
                keys, args = self._schedule_call(chunk)
                await self._scripts["schedule"](keys=keys, args=args, client=pipe)
            replies = await pipe.execute()
        return [bool(x) for reply in replies for x in reply]

    def _schedule_call(self, events: Sequence[ScheduledEvent]) -> tuple[list[str], list[Any]]:
        keys = [
            self.due_key,
            self.payload_key,
            self.counts_key,
            *self.result_buckets(),
            self.seq_key,
        ]
        args: list[Any] = [self.channel]
        for event in events:
            args += [
                priority_part(event.priority) + event.schedule_id,
                event.due_us,
                stored_body(event, sealer=self._cipher),
            ]
        return keys, args

    async def upsert(self, items: Sequence[tuple[ScheduledEvent, str, bool]]) -> list[int]:
        """Upsert ``(event, revision, here)`` items in order, in one script per chunk.

        ``here``: the event is due in this tier (stored here), else only an older pending copy
        is taken out. Per item the code of ``lua/upsert.lua``: 0 ignored (not newer than what
        is stored or remembered), 1 new here, 2 replaced a pending copy, 3 the id is firing
        (the new version waits for the firing to end), 4 scheduled again after its outcome.
        """
        keys = [
            self.due_key,
            self.payload_key,
            self.counts_key,
            *self.result_buckets(),
            self.seq_key,
            self.leases_key,
            self.next_key,
        ]
        codes: list[int] = []
        for start in range(0, len(items), SCHEDULE_CHUNK):
            args: list[Any] = [self.channel]
            for event, revision, here in items[start : start + SCHEDULE_CHUNK]:
                args += [
                    "n" if here else "f",
                    priority_part(event.priority) + event.schedule_id,
                    event.due_us,
                    stored_body(event, revision, self._cipher),
                ]
            codes += [int(code) for code in await self._run("upsert", keys, args)]
        return codes

    async def known(self, ids: Sequence[str]) -> set[str]:
        """The ids pending, leased or remembered here (one pipelined round trip)."""
        unique = list(dict.fromkeys(ids))
        if not unique:
            return set()
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in (self.payload_key, *self.result_buckets()):
                pipe.hmget(key, unique)
            replies = await pipe.execute()
        return {sid for j, sid in enumerate(unique) if any(r[j] is not None for r in replies)}

    async def claim(self, now_us: int, limit: int, lease_seconds: float) -> Claim:
        """Lease up to ``limit`` due events under a fresh token."""
        token = uuid.uuid4().hex
        deadline = now_us + int(lease_seconds * 1_000_000)
        flat = await self._run(
            "claim",
            [self.due_key, self.payload_key, self.inflight_key, self.leases_key],
            [now_us, limit, deadline, token],
        )
        events = []
        fire_at: list[int] = []
        tail = flat.pop() if flat else b""
        next_due = int(float(tail)) if tail else None
        unreadable: list[tuple[str, UndecryptablePayload]] = []
        for i in range(0, len(flat), 3):
            value: bytes = flat[i + 2]
            if not value:
                continue  # payload vanished: nothing to fire (cannot happen via the scripts)
            schedule_id = flat[i].decode()
            try:
                event = decode_event(
                    _codec_bytes(value), schedule_id, EventStatus.PROCESSING, self._cipher
                )
            except UndecryptablePayload as exc:
                unreadable.append((schedule_id, exc))
                continue
            events.append(event)
            fire_at.append(int(float(flat[i + 1])))
        if unreadable:
            await self._park(token, unreadable)
        return Claim(token=token, events=events, next_due_us=next_due, fire_at_us=fire_at)

    async def _park(
        self, token: str, unreadable: Sequence[tuple[str, UndecryptablePayload]]
    ) -> None:
        """Set claimed events the ring cannot open aside, kept with the reason (``park.lua``)."""
        args: list[Any] = [token]
        for schedule_id, exc in unreadable:
            args += [schedule_id, exc.reason]
            if self._cipher is not None:
                self._cipher.unreadable.found("redis", exc)
        keys = [
            self.inflight_key,
            self.leases_key,
            self.payload_key,
            self.parked_key,
            self.due_key,
            self.next_key,
            self.seq_key,
        ]
        parked = await self._run("park", keys, args)
        log.warning(
            "parked %d event(s) whose payload cannot be opened: %s",
            parked,
            unreadable[0][1].reason,
        )

    async def rekey_page(self, cursor: str, count: int) -> tuple[str, RekeyPage]:
        """One step of a key rotation: ``p<n>`` walks the payload hash (re-sealing values not
        sealed with their tenant's key now, each only if unchanged since read), then ``k<n>``
        the parked hash (scheduling again the events the ring opens now). Returns the next
        cursor ("" when done)."""
        phase, position = cursor[:1] or "p", int(cursor[1:] or 0)
        key = self.payload_key if phase == "p" else self.parked_key
        position, flat = await self._redis.hscan(key, position, count=count)
        assert isinstance(flat, dict)  # HSCAN pairs (decode_responses is off)
        items = [(_as_bytes(k).decode(), _as_bytes(v)) for k, v in flat.items()]
        page = RekeyPage(scanned=len(items))
        await (self._rekey if phase == "p" else self._unpark)(items, page)
        if position:
            return f"{phase}{position}", page
        return ("k0" if phase == "p" else ""), page

    def _require_cipher(self) -> PayloadCipher:
        if self._cipher is None:
            raise ValueError("no key ring configured")
        return self._cipher

    async def _rekey(self, items: Sequence[tuple[str, bytes]], page: RekeyPage) -> None:
        cipher = self._require_cipher()
        args: list[Any] = []
        for schedule_id, value in items:
            raw = _codec_bytes(value)
            entity_type, sealed = sealed_part(raw)
            try:
                if sealed is not None and not cipher.needs_rekey(sealed, entity_type):
                    continue
                new = value[: len(value) - len(raw)] + reseal(raw, schedule_id, cipher)
            except UndecryptablePayload:
                page.unreadable += 1  # parked when it is claimed
                continue
            args += [schedule_id, value, new]
        if args:
            page.rekeyed += int(await self._run("rekey", [self.payload_key], args))

    async def _unpark(self, items: Sequence[tuple[str, bytes]], page: RekeyPage) -> None:
        cipher = self._require_cipher()
        found: list[tuple[str, bytes, ScheduledEvent]] = []
        for schedule_id, parked in items:
            raw = _codec_bytes(parked.partition(b"\n")[2])
            try:
                found.append((schedule_id, parked, decode_event(raw, schedule_id, sealer=cipher)))
            except UndecryptablePayload:
                page.unreadable += 1
        if not found:
            return
        await self.schedule([event for _, _, event in found])  # insert-if-absent
        args = [x for schedule_id, parked, _ in found for x in (schedule_id, parked)]
        page.restored += int(await self._run("unpark", [self.parked_key], args))

    async def parked(self) -> int:
        """How many events are parked (their payload could not be opened)."""
        return int(await self._redis.hlen(self.parked_key))

    async def ack(self, token: str, finished: Sequence[Finished], now_us: int | None = None) -> int:
        """Final states (remembered as of ``now_us``, default now) for events still leased
        under ``token``; others are left alone."""
        now_us = _now_us() if now_us is None else now_us
        groups: dict[tuple[str, str], list[str]] = {}
        for item in finished:
            groups.setdefault((item.status.value, item.reason or ""), []).append(item.schedule_id)
        keys = [
            self.inflight_key,
            self.leases_key,
            self.payload_key,
            self.counts_key,
            self.result_buckets()[0],
            self.next_key,
            self.due_key,
            self.seq_key,
        ]
        acked = 0
        for (status, reason), ids in groups.items():
            args = [token, self._result_ttl, now_us, status, reason, self.channel, *ids]
            acked += int(await self._run("ack", keys, args))
        return acked

    async def retry(self, token: str, event: ScheduledEvent, due_us: int) -> bool:
        """Back to the due set at ``due_us``, keeping the original ``scheduled_at`` (unless a
        newer version came meanwhile: it takes the event's place)."""
        done = await self._run(
            "retry",
            [
                self.inflight_key,
                self.leases_key,
                self.payload_key,
                self.due_key,
                self.next_key,
                self.seq_key,
            ],
            [
                token,
                event.schedule_id,
                due_us,
                stored_body(event, sealer=self._cipher),
                self.channel,
            ],
        )
        return bool(done)

    async def cancel(self, schedule_id: str, now_us: int | None = None) -> bool:
        """Cancel a pending event; an event already leased is firing and is not recalled."""
        return (await self.cancel_many([schedule_id], now_us))[0]

    async def cancel_many(self, ids: Sequence[str], now_us: int | None = None) -> list[bool]:
        """:meth:`cancel` for each of ``ids`` in one round trip; True where cancelled.

        One script call per id (each atomic on its own, as for one event), so other clients'
        commands still run between them.
        """
        if not ids:
            return []
        now_us = _now_us() if now_us is None else now_us
        keys = [
            self.due_key,
            self.payload_key,
            self.counts_key,
            self.result_buckets()[0],
            self.next_key,
        ]
        async with self._redis.pipeline(transaction=False) as pipe:
            for schedule_id in ids:
                args: list[str | int] = [schedule_id, self._result_ttl, now_us]
                await self._scripts["cancel"](keys=keys, args=args, client=pipe)
            replies = await pipe.execute()
        return [bool(done) for done in replies]

    async def discard(self, schedule_id: str, written: ScheduledEvent | None = None) -> bool:
        """Remove a pending event without remembering it (it may be scheduled again).

        With ``written`` (the copy the caller stored), only if the stored one is still that
        copy: a user's reschedule written since is kept.
        """
        args: list[Any] = [schedule_id]
        if written is not None:
            current = await self._redis.hget(self.payload_key, schedule_id)
            if not isinstance(current, bytes) or not self._holds(current, schedule_id, written):
                return False
            args.append(_codec_bytes(current))  # compare-and-set on the value just read
        return bool(await self._run("discard", [self.due_key, self.payload_key], args))

    def _holds(self, value: bytes, schedule_id: str, written: ScheduledEvent) -> bool:
        """True when ``value`` is the stored form of ``written`` (sealed ones differ in their
        nonce: compared opened)."""
        if self._cipher is None:
            return _codec_bytes(value) == stored_body(written)
        try:
            return decode_event(_codec_bytes(value), schedule_id, sealer=self._cipher) == written
        except UndecryptablePayload:
            return False

    async def remove_orphans(self, scan_count: int = 500) -> int:
        """Remove payloads and inflight entries nothing refers to; returns how many."""
        keys = [self.due_key, self.payload_key, self.inflight_key, self.leases_key]
        removed = 0
        cursor = 0
        while True:
            cursor, fields = await self._redis.hscan(self.payload_key, cursor, count=scan_count)
            if fields:
                removed += int(await self._run("orphans", keys, list(fields)))
            if cursor == 0:
                break
        async for chunk in _zscan_ids(self._redis, self.inflight_key, scan_count):
            removed += int(await self._run("orphans", keys, chunk))
        return removed

    async def reschedule(self, schedule_id: str, due_us: int) -> bool:
        """Move a pending event (compare-and-set on its payload, retried on a race)."""
        for _ in range(5):
            current = await self._redis.hget(self.payload_key, schedule_id)
            if not isinstance(current, bytes):
                return False
            moved = with_due(_codec_bytes(current), due_us)  # a sealed payload stays sealed
            done = int(
                await self._run(
                    "reschedule",
                    [self.due_key, self.payload_key],
                    [
                        schedule_id,
                        current,
                        due_us,
                        moved,
                        self.channel,
                    ],
                )
            )
            if done >= 0:
                return done == 1
        return False

    async def reap(self, now_us: int, limit: int = 1000) -> int:
        """Expired leases go back to the due set; their old tokens stop working."""
        return int(
            await self._run(
                "reap",
                [
                    self.inflight_key,
                    self.leases_key,
                    self.payload_key,
                    self.due_key,
                    self.next_key,
                    self.seq_key,
                ],
                [now_us, limit, self.channel],
            )
        )

    async def get(self, schedule_id: str) -> ScheduledEvent | None:
        """The event if pending or leased; a stub with its final status if remembered."""
        value, lease, _score, result = await self._run(
            "get",
            [self.due_key, self.payload_key, self.leases_key, *self.result_buckets()],
            [schedule_id],
        )
        if value:
            status = EventStatus.PROCESSING if lease else EventStatus.PENDING
            # scheduled_at stays the original while a retry waits (the score is the retry time)
            return self._readable(_codec_bytes(value), schedule_id, status)
        if result:
            return _finished_stub(schedule_id, result)
        parked = await self._redis.hget(self.parked_key, schedule_id)
        if isinstance(parked, bytes):
            reason, _, value = parked.partition(b"\n")
            event = self._readable(_codec_bytes(value), schedule_id, EventStatus.FAILED)
            return replace(event, last_error=f"parked: {reason.decode()}")
        return None

    def _readable(self, raw: bytes, schedule_id: str, status: EventStatus) -> ScheduledEvent:
        """The stored event; one the ring cannot open comes without body and headers, its
        ``last_error`` saying why."""
        try:
            return decode_event(raw, schedule_id, status, self._cipher)
        except UndecryptablePayload as exc:
            return decode_unopened(raw, schedule_id, status, exc.reason)

    async def next_due_us(self) -> int | None:
        """Due time of the earliest pending event."""
        head = await self._redis.zrange(self.due_key, 0, 0, withscores=True)
        return int(head[0][1]) if head else None

    async def counts(self) -> dict[str, int]:
        """Pending and processing now, plus totals per final status since the store began."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.due_key)
            pipe.zcard(self.inflight_key)
            pipe.hgetall(self.counts_key)
            pending, processing, totals = await pipe.execute()
        out = {"pending": int(pending), "processing": int(processing)}
        out.update({k.decode(): int(v) for k, v in totals.items()})
        return out

    async def wakeups(self) -> AsyncIterator[int]:
        """Due times published by any process when an event became the earliest.

        Yields ``0`` first, once subscribed: from then on no wake-up can be missed.
        """
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.channel)
        yield 0
        try:
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is not None and message["type"] == "message":
                    yield int(float(message["data"]))
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def delete_all(self) -> None:
        """Remove this store's keys (its own prefix only; never FLUSHALL). For tests and tools."""
        keys = [
            self.due_key,
            self.payload_key,
            self.inflight_key,
            self.leases_key,
            self.counts_key,
            self.seq_key,
            self.next_key,
            self.parked_key,
        ]
        await self._redis.delete(*keys)
        async for key in self._redis.scan_iter(match=f"{self._tag}:results:*", count=1000):
            await self._redis.delete(key)


def _now_us() -> int:
    return time.time_ns() // 1000


def _with_due(event: ScheduledEvent, due_us: int) -> ScheduledEvent:
    return replace(event, scheduled_at=from_epoch_us(due_us))


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


async def _zscan_ids(client: Redis, key: str, count: int) -> AsyncIterator[list[bytes]]:
    cursor = 0
    while True:
        cursor, pairs = await client.zscan(key, cursor, count=count)
        if pairs:
            yield [bytes(member) for member, _score in pairs]  # type: ignore[arg-type]
        if cursor == 0:
            return


def _finished_stub(schedule_id: str, result: bytes) -> ScheduledEvent:
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

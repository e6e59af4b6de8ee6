"""One shard of the near-term tier on Redis/Valkey: a due-time sorted set driven by atomic Lua
scripts. The key layout and the shards are described in :mod:`delayline.adapters.redis_layout`;
:class:`delayline.adapters.redis_sharded.ShardedNearTermStore` routes over the shards.

Just over 400 lines: one method per operation of the near-term port, each a thin call of its
script and the decoding of its reply; upkeep (orphans, key rotation) is in ``redis_upkeep``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import replace
from typing import Any

from delayline.adapters.encryption import PayloadCipher
from delayline.adapters.redis_connect import RedisClient, subscriber
from delayline.adapters.redis_layout import (
    ShardKeys,
    codec_bytes,
    finished_stub,
    priority_part,
    shard_tag,
    stored_body,
    wake_channel,
)
from delayline.adapters.redis_scripts import ScriptCall, register_scripts, run_pipelined
from delayline.adapters.redis_upkeep import ShardUpkeep
from delayline.domain.codec import (
    UndecryptablePayload,
    decode_event,
    decode_unopened,
    with_due,
)
from delayline.domain.events import EventStatus, ScheduledEvent
from delayline.ports import Claim, Finished

log = logging.getLogger(__name__)

SCHEDULE_CHUNK = 500
"""Events per schedule script: bounds how long one call blocks the server."""


class RedisNearTermStore(ShardUpkeep):
    """:class:`delayline.ports.NearTermStore` on one Redis/Valkey (or one Cluster slot)."""

    def __init__(
        self,
        client: RedisClient,
        prefix: str = "delayline",
        result_ttl_seconds: int = 3600,
        cipher: PayloadCipher | None = None,
        *,
        shard: int = 0,
        shards: int = 1,
    ):
        self._redis = client
        self._cipher = cipher
        self.shard = shard
        self.keys = keys = ShardKeys(shard_tag(prefix, shard, shards), wake_channel(prefix))
        self._tag = keys.tag
        self.due_key = keys.due
        self.payload_key = keys.payload
        self.inflight_key = keys.inflight
        self.leases_key = keys.leases
        self.counts_key = keys.counts
        self.parked_key = keys.parked
        self.seq_key = keys.seq
        self.next_key = keys.next
        self.channel = keys.channel
        self._result_ttl = result_ttl_seconds
        self._scripts = register_scripts(client)

    @property
    def client(self) -> RedisClient:
        """The client of the server (or Cluster) that holds this shard."""
        return self._redis

    def result_buckets(self) -> tuple[str, str]:
        """The current and the previous results hash (outcomes are looked up in both)."""
        return self.keys.result_buckets(self._result_ttl)

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
        calls = self.schedule_calls(events)
        if len(calls) <= 1:
            replies = [await self._run("schedule", *self._schedule_call(events))]
        else:  # one round trip for all chunks; other clients' commands run between them
            replies = await run_pipelined(self._redis, calls)
        return [bool(x) for reply in replies for x in reply]

    def schedule_calls(self, events: Sequence[ScheduledEvent]) -> list[ScriptCall]:
        """The schedule script calls storing ``events``, one per ``SCHEDULE_CHUNK``: a caller
        may pipeline them with other shards' calls (their replies: 1 inserted, 0 not)."""
        return [
            (self._scripts["schedule"], *self._schedule_call(events[i : i + SCHEDULE_CHUNK]))
            for i in range(0, len(events), SCHEDULE_CHUNK)
        ]

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

    async def schedule_stored(
        self, priority: str, schedule_id: str, due_us: int, value: bytes
    ) -> bool:
        """Insert-if-absent of an event in its stored form (``value`` with its member prefix,
        as another shard holds it; ``priority`` the prefix's priority part), as schedule."""
        keys, _ = self._schedule_call([])
        args = [self.channel, priority + schedule_id, due_us, codec_bytes(value)]
        return bool((await self._run("schedule", keys, args))[0])

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

    async def claim(
        self,
        now_us: int,
        limit: int,
        lease_seconds: float,
        shards: Collection[int] | None = None,
        *,
        token: str | None = None,
    ) -> Claim:
        """Lease up to ``limit`` due events under ``token`` (default: a fresh one); nothing
        when ``shards`` (None: all) leaves this shard out."""
        token = token or uuid.uuid4().hex
        if shards is not None and self.shard not in shards:
            return Claim(token=token, events=[])
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
                    codec_bytes(value), schedule_id, EventStatus.PROCESSING, self._cipher
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
        calls: list[ScriptCall] = [
            (self._scripts["cancel"], keys, [schedule_id, self._result_ttl, now_us])
            for schedule_id in ids
        ]
        return [bool(done) for done in await run_pipelined(self._redis, calls)]

    async def reschedule(self, schedule_id: str, due_us: int) -> bool:
        """Move a pending event (compare-and-set on its payload, retried on a race)."""
        for _ in range(5):
            current = await self._redis.hget(self.payload_key, schedule_id)
            if not isinstance(current, bytes):
                return False
            moved = with_due(codec_bytes(current), due_us)  # a sealed payload stays sealed
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

    async def reap(
        self, now_us: int, limit: int = 1000, shards: Collection[int] | None = None
    ) -> int:
        """Expired leases go back to the due set; their old tokens stop working (only when
        ``shards``, None: all, holds this shard)."""
        if shards is not None and self.shard not in shards:
            return 0
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
            return self._readable(codec_bytes(value), schedule_id, status)
        if result:
            return finished_stub(schedule_id, result)
        parked = await self._redis.hget(self.parked_key, schedule_id)
        if isinstance(parked, bytes):
            reason, _, value = parked.partition(b"\n")
            event = self._readable(codec_bytes(value), schedule_id, EventStatus.FAILED)
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

    async def shard_counts(self) -> list[dict[str, int]]:
        """This shard's counts, alone."""
        return [await self.counts()]

    async def wakeups(self) -> AsyncIterator[int]:
        """Due times published by any process when an event became the earliest.

        Yields ``0`` first, once subscribed: from then on no wake-up can be missed.
        """
        pubsub = subscriber(self._redis)
        await pubsub.subscribe(self.channel)
        yield 0
        try:
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is not None and message["type"] == "message":
                    yield int(float(message["data"]))
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]


def _now_us() -> int:
    return time.time_ns() // 1000

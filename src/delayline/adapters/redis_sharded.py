"""The near-term tier over its virtual shards: each call goes to the shard of its ids
(:func:`delayline.adapters.redis_layout.shard_of`), bulk calls are grouped per shard and
pipelined per server, and reads that span the tier (claims, counts, wake-ups) gather them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from typing import TypeVar

from delayline.adapters.encryption import PayloadCipher
from delayline.adapters.redis_connect import RedisClient, RedisServers
from delayline.adapters.redis_layout import control_tag, shard_of
from delayline.adapters.redis_scripts import ScriptCall, run_pipelined
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.domain.event_status import total_counts
from delayline.domain.events import ScheduledEvent
from delayline.errors import PartlyAcknowledged
from delayline.ports import Claim, Finished, RekeyPage

log = logging.getLogger(__name__)

T = TypeVar("T")
Item = TypeVar("Item")


class ShardCountMismatch(RuntimeError):
    """The configured shard count is not the one the data was written with."""


class ShardedNearTermStore:
    """:class:`delayline.ports.NearTermStore` over ``shards`` virtual shards on ``servers``."""

    def __init__(
        self,
        servers: RedisServers,
        prefix: str = "delayline",
        result_ttl_seconds: int = 3600,
        cipher: PayloadCipher | None = None,
        *,
        shards: int = 1,
    ) -> None:
        self.servers = servers
        self.prefix = prefix
        self.shard_count = shards
        self.shards = [
            RedisNearTermStore(
                servers.for_shard(k), prefix, result_ttl_seconds, cipher, shard=k, shards=shards
            )
            for k in range(shards)
        ]
        self.shard_count_key = f"{control_tag(prefix)}:shards"

    def shard_for(self, schedule_id: str) -> RedisNearTermStore:
        """The shard that holds ``schedule_id``."""
        return self.shards[shard_of(schedule_id, self.shard_count)]

    def _group(self, ids: Sequence[str]) -> dict[int, list[int]]:
        """Positions of ``ids`` per shard, in order."""
        groups: dict[int, list[int]] = {}
        for position, schedule_id in enumerate(ids):
            groups.setdefault(shard_of(schedule_id, self.shard_count), []).append(position)
        return groups

    async def check_shard_count(self) -> None:
        """Record the shard count at first start; refuse a different one later."""
        control = self.servers.control
        await control.set(self.shard_count_key, self.shard_count, nx=True)
        recorded = int(await control.get(self.shard_count_key) or 0)
        if recorded != self.shard_count:
            raise ShardCountMismatch(
                f"the near-term tier under prefix {self.prefix!r} was written with "
                f"{recorded} shard(s) but SCHEDULES_REDIS_SHARDS is {self.shard_count}: set it "
                f"back to {recorded}, or stop every node and run "
                f"`delayline reshard --to {self.shard_count}`"
            )

    async def ping(self) -> bool:
        """True when every server answers."""
        return await self.servers.ping()

    async def schedule(self, events: Sequence[ScheduledEvent]) -> list[bool]:
        """Insert-if-absent for every event, the calls of each server in one pipeline."""
        if self.shard_count == 1:
            return await self.shards[0].schedule(events)
        # per server: its client, the script calls, and the positions they answer for
        per_client: dict[int, tuple[RedisClient, list[ScriptCall], list[int]]] = {}
        for shard, positions in self._group([e.schedule_id for e in events]).items():
            store = self.shards[shard]
            _, calls, answered = per_client.setdefault(id(store.client), (store.client, [], []))
            calls += store.schedule_calls([events[p] for p in positions])
            answered += positions
        out = [False] * len(events)

        async def run(client: RedisClient, calls: list[ScriptCall], answered: list[int]) -> None:
            flat = [bool(x) for reply in await run_pipelined(client, calls) for x in reply]
            for position, inserted in zip(answered, flat, strict=True):
                out[position] = inserted

        await asyncio.gather(*(run(*entry) for entry in per_client.values()))
        return out

    async def _routed(
        self,
        items: Sequence[Item],
        schedule_id: Callable[[Item], str],
        call: Callable[[RedisNearTermStore, list[Item]], Awaitable[list[T]]],
    ) -> list[T]:
        """``call(store, items of its shard)`` per shard, at once; the replies in ``items``'
        order (each call returns one reply per item)."""
        groups = self._group([schedule_id(item) for item in items])
        out: dict[int, T] = {}
        shards = list(groups)
        replies = await asyncio.gather(
            *(call(self.shards[k], [items[p] for p in groups[k]]) for k in shards)
        )
        for k, reply in zip(shards, replies, strict=True):
            for position, value in zip(groups[k], reply, strict=True):
                out[position] = value
        return [out[position] for position in range(len(items))]

    async def upsert(self, items: Sequence[tuple[ScheduledEvent, str, bool]]) -> list[int]:
        """Upsert each item in its shard (in order within a shard)."""
        return await self._routed(items, lambda item: item[0].schedule_id, _upsert)

    async def known(self, ids: Sequence[str]) -> set[str]:
        """The ids pending, leased or remembered in their shards."""
        groups = self._group(ids)
        found = await asyncio.gather(
            *(self.shards[k].known([ids[p] for p in ps]) for k, ps in groups.items())
        )
        return set().union(*found)

    async def claim(
        self,
        now_us: int,
        limit: int,
        lease_seconds: float,
        shards: Collection[int] | None = None,
    ) -> Claim:
        """Lease due events from each of ``shards`` (None: all) under one token, at once:
        ``limit`` split evenly among them, merged in fire-time order. A shard whose server is
        down costs only its own events; the call fails when every shard failed."""
        owned = [k for k in range(self.shard_count) if shards is None or k in shards]
        token = uuid.uuid4().hex
        if not owned:
            return Claim(token=token, events=[])
        each = max(1, math.ceil(limit / len(owned)))
        claims = await _survivors(
            [self.shards[k].claim(now_us, each, lease_seconds, token=token) for k in owned],
            "claim",
        )
        if len(claims) == 1:
            return claims[0]
        pairs = [
            (fire_at, event)
            for c in claims
            for event, fire_at in zip(
                c.events, c.fire_at_us or [e.due_us for e in c.events], strict=True
            )
        ]
        pairs.sort(key=lambda pair: pair[0])
        dues = [c.next_due_us for c in claims if c.next_due_us is not None]
        return Claim(
            token=token,
            events=[event for _, event in pairs],
            next_due_us=min(dues) if dues else None,
            fire_at_us=[fire_at for fire_at, _ in pairs],
        )

    async def ack(self, token: str, finished: Sequence[Finished], now_us: int | None = None) -> int:
        """Final states for events still leased under ``token``, each in its shard. When some
        shards answer and others cannot be reached, raises :class:`PartlyAcknowledged` naming
        the events to acknowledge again; when none answers, the first error."""
        groups = self._group([item.schedule_id for item in finished])
        shards = list(groups)
        replies = await asyncio.gather(
            *(self.shards[k].ack(token, [finished[p] for p in groups[k]], now_us) for k in shards),
            return_exceptions=True,
        )
        failed = [(k, r) for k, r in zip(shards, replies, strict=True) if isinstance(r, Exception)]
        acked = sum(r for r in replies if isinstance(r, int))
        if not failed:
            return acked
        if len(failed) == len(shards):
            raise failed[0][1]
        remaining = [finished[p].schedule_id for k, _ in failed for p in groups[k]]
        raise PartlyAcknowledged(acked, remaining, failed[0][1])

    async def retry(self, token: str, event: ScheduledEvent, due_us: int) -> bool:
        """Back to its shard's due set at ``due_us``."""
        return await self.shard_for(event.schedule_id).retry(token, event, due_us)

    async def cancel(self, schedule_id: str, now_us: int | None = None) -> bool:
        """Cancel a pending event in its shard."""
        return await self.shard_for(schedule_id).cancel(schedule_id, now_us)

    async def cancel_many(self, ids: Sequence[str], now_us: int | None = None) -> list[bool]:
        """:meth:`cancel` for each of ``ids``: one pipeline per shard, the shards at once."""
        return await self._routed(
            ids, lambda schedule_id: schedule_id, lambda s, part: s.cancel_many(part, now_us)
        )

    async def discard(self, schedule_id: str, written: ScheduledEvent | None = None) -> bool:
        """Remove a pending event without remembering it (see the shard's ``discard``)."""
        return await self.shard_for(schedule_id).discard(schedule_id, written)

    async def reschedule(self, schedule_id: str, due_us: int) -> bool:
        """Move a pending event within its shard."""
        return await self.shard_for(schedule_id).reschedule(schedule_id, due_us)

    async def reap(
        self, now_us: int, limit: int = 1000, shards: Collection[int] | None = None
    ) -> int:
        """Expired leases of ``shards`` (None: all) back to their due sets."""
        owned = [k for k in range(self.shard_count) if shards is None or k in shards]
        reaped = await _survivors([self.shards[k].reap(now_us, limit) for k in owned], "reap")
        return sum(reaped)

    async def get(self, schedule_id: str) -> ScheduledEvent | None:
        """The event from its shard."""
        return await self.shard_for(schedule_id).get(schedule_id)

    async def next_due_us(self) -> int | None:
        """Due time of the earliest pending event of any shard."""
        dues = await asyncio.gather(*(s.next_due_us() for s in self.shards))
        return min((d for d in dues if d is not None), default=None)

    async def counts(self) -> dict[str, int]:
        """Counts summed over the shards."""
        return total_counts(await self.shard_counts())

    async def shard_counts(self) -> list[dict[str, int]]:
        """Counts per shard, in shard order."""
        return list(await asyncio.gather(*(s.counts() for s in self.shards)))

    async def parked(self) -> int:
        """Events parked in any shard."""
        return sum(await asyncio.gather(*(s.parked() for s in self.shards)))

    async def remove_orphans(self, scan_count: int = 500) -> int:
        """Orphans removed from every shard."""
        return sum([await s.remove_orphans(scan_count) for s in self.shards])

    async def rekey_page(self, cursor: str, count: int) -> tuple[str, RekeyPage]:
        """One step of a key rotation: the cursor is ``<shard>/<the shard's cursor>``."""
        shard_text, _, inner = cursor.partition("/")
        shard = int(shard_text or 0)
        following, page = await self.shards[shard].rekey_page(inner, count)
        if following:
            return f"{shard}/{following}", page
        return ("" if shard + 1 >= self.shard_count else f"{shard + 1}/"), page

    async def wakeups(self) -> AsyncIterator[int]:
        """Wake-ups published by any shard: one subscription per server (a Cluster's PUBLISH
        reaches every node). Yields ``0`` once every subscription is in place."""
        stores = list({id(s.client): s for s in self.shards}.values())
        if len(stores) == 1:
            async for due_us in stores[0].wakeups():
                yield due_us
            return
        queue: asyncio.Queue[int | Exception] = asyncio.Queue()

        async def pump(store: RedisNearTermStore) -> None:
            try:
                async for due_us in store.wakeups():
                    queue.put_nowait(due_us)
            except Exception as exc:  # ends the merged stream: the caller subscribes again
                queue.put_nowait(exc)

        tasks = [asyncio.create_task(pump(store)) for store in stores]
        subscribed = 0
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                if item == 0:
                    subscribed += 1
                    if subscribed == len(stores):
                        yield 0
                    continue
                yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def delete_all(self) -> None:
        """Remove every shard's keys and the shard-count record (never FLUSHALL)."""
        for store in self.shards:
            await store.delete_all()
        await self.servers.control.delete(self.shard_count_key)


async def _upsert(
    store: RedisNearTermStore, items: Sequence[tuple[ScheduledEvent, str, bool]]
) -> list[int]:
    return await store.upsert(items)


async def _survivors(calls: Sequence[Awaitable[T]], what: str) -> list[T]:
    """The results of ``calls`` run at once, leaving out the failed ones (logged); raises the
    first error when every call failed."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    good = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors and not good:
        raise errors[0]
    if errors:
        log.warning("%s failed on %d of %d shards: %s", what, len(errors), len(results), errors[0])
    return good

"""Upkeep of one near-term shard: key rotation (re-sealing, unparking), orphan and stale-copy
removal, and deleting a shard's keys. The base of
:class:`delayline.adapters.redis_store.RedisNearTermStore`, which sets the attributes below.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from delayline.adapters.encryption import PayloadCipher
from delayline.adapters.redis_connect import RedisClient
from delayline.adapters.redis_layout import (
    PRIORITY_PART_LEN,
    ShardKeys,
    codec_bytes,
    stored_body,
)
from delayline.domain.codec import UndecryptablePayload, decode_event, reseal, sealed_part
from delayline.domain.events import ScheduledEvent
from delayline.ports import RekeyPage


class ShardUpkeep:
    """Maintenance operations of one shard."""

    _redis: RedisClient
    _cipher: PayloadCipher | None
    _scripts: dict[str, AsyncScript]
    keys: ShardKeys
    due_key: str
    payload_key: str
    next_key: str
    inflight_key: str
    leases_key: str
    parked_key: str

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self._scripts[name](keys=list(keys), args=list(args))

    async def schedule(self, events: Sequence[ScheduledEvent]) -> list[bool]:
        """Insert-if-absent (the store's)."""
        raise NotImplementedError

    async def rekey_page(self, cursor: str, count: int) -> tuple[str, RekeyPage]:
        """One step of a key rotation: ``p<n>`` walks the payload hash, then ``n<n>`` the
        newer versions waiting for a firing to end (re-sealing values not sealed with their
        tenant's key now, each only if unchanged since read), then ``k<n>`` the parked hash
        (scheduling again the events the ring opens now). Returns the next cursor ("" when
        done)."""
        phase, position = cursor[:1] or "p", int(cursor[1:] or 0)
        key = {"p": self.payload_key, "n": self.next_key, "k": self.parked_key}[phase]
        position, flat = await self._redis.hscan(key, position, count=count)
        assert isinstance(flat, dict)  # HSCAN pairs (decode_responses is off)
        items = [(as_bytes(k).decode(), as_bytes(v)) for k, v in flat.items()]
        page = RekeyPage(scanned=len(items))
        if phase == "k":
            await self._unpark(items, page)
        else:
            await self._rekey(key, items, page)
        if position:
            return f"{phase}{position}", page
        return {"p": "n0", "n": "k0", "k": ""}[phase], page

    def _require_cipher(self) -> PayloadCipher:
        if self._cipher is None:
            raise ValueError("no key ring configured")
        return self._cipher

    async def _rekey(self, key: str, items: Sequence[tuple[str, bytes]], page: RekeyPage) -> None:
        """Re-seal the values of ``key`` (the payload hash, or ``next`` whose values start with
        ``<score> <priority part>`` instead of the member prefix)."""
        cipher = self._require_cipher()
        args: list[Any] = []
        for schedule_id, value in items:
            if key == self.next_key:  # after "<score> <priority part>"
                raw = value[value.index(b" ") + 1 + PRIORITY_PART_LEN :]
            else:
                raw = codec_bytes(value)
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
            page.rekeyed += int(await self._run("rekey", [key], args))

    async def _unpark(self, items: Sequence[tuple[str, bytes]], page: RekeyPage) -> None:
        cipher = self._require_cipher()
        found: list[tuple[str, bytes, ScheduledEvent]] = []
        for schedule_id, parked in items:
            raw = codec_bytes(parked.partition(b"\n")[2])
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
            args.append(codec_bytes(current))  # compare-and-set on the value just read
        return bool(await self._run("discard", [self.due_key, self.payload_key], args))

    def _holds(self, value: bytes, schedule_id: str, written: ScheduledEvent) -> bool:
        """True when ``value`` is the stored form of ``written`` (sealed ones differ in their
        nonce: compared opened)."""
        if self._cipher is None:
            return codec_bytes(value) == stored_body(written)
        try:
            return decode_event(codec_bytes(value), schedule_id, sealer=self._cipher) == written
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

    async def delete_all(self) -> None:
        """Remove this store's keys (its own prefix only; never FLUSHALL). For tests and tools."""
        for key in [*self.keys.fixed(), *await _result_keys(self._redis, self.keys)]:
            await self._redis.delete(key)  # one by one: a Cluster refuses cross-slot DELs


def as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


async def _zscan_ids(client: RedisClient, key: str, count: int) -> AsyncIterator[list[bytes]]:
    cursor = 0
    while True:
        cursor, pairs = await client.zscan(key, cursor, count=count)
        if pairs:
            yield [bytes(member) for member, _score in pairs]  # type: ignore[arg-type]
        if cursor == 0:
            return


async def _result_keys(client: RedisClient, keys: ShardKeys) -> list[str]:
    """The results buckets of a shard (on a Cluster: scanned on the master of its slot)."""
    if isinstance(client, Redis):
        found = client.scan_iter(match=keys.results_pattern, count=1000)
    else:
        await client.initialize()  # the slot map (a no-op once known)
        node = client.get_node_from_key(keys.due)
        found = client.scan_iter(match=keys.results_pattern, count=1000, target_nodes=node)
    return [as_bytes(k).decode() async for k in found]

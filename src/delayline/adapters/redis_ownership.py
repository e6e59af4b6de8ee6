"""Shard ownership on Redis/Valkey: :class:`delayline.ports.ShardLeases`.

Key layout (every key shares the control hash tag ``{prefix:ctl}``, so each script's keys sit
in one Cluster slot and one call covers any number of shards):

- ``{p:ctl}:nodes``     ZSET node id → expiry (epoch ms, the server's clock)
- ``{p:ctl}:lease:<k>`` STRING ``node:token`` with a PX time to live: who owns shard ``k``
- ``{p:ctl}:fence:<k>`` STRING the fencing counter of shard ``k`` (INCR; never expires)

The membership uses the server's clock, so nodes need not agree on the time; the lease
deadlines each node keeps for itself use its own monotonic clock (``services/ownership.py``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from importlib import resources
from typing import Any

from redis.commands.core import AsyncScript

from delayline.adapters.redis_connect import RedisClient


def _load(name: str) -> str:
    return (
        resources.files("delayline.adapters").joinpath("lua", f"ownership_{name}.lua").read_text()
    )


def _ms(seconds: float) -> int:
    if seconds <= 0:
        raise ValueError("a lease's time to live must be positive")
    return max(1, int(seconds * 1000))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisShardLeases:
    """Membership and fenced shard leases under the control tag ``{prefix:ctl}``."""

    def __init__(self, client: RedisClient, prefix: str = "delayline"):
        self._redis = client
        self.tag = "{" + prefix + ":ctl}"
        self.nodes_key = f"{self.tag}:nodes"
        self._scripts: dict[str, AsyncScript] = {
            name: client.register_script(_load(name))
            for name in ("heartbeat", "acquire", "renew", "release")
        }

    def lease_key(self, shard: int) -> str:
        """The key holding ``node:token`` of the shard's owner."""
        return f"{self.tag}:lease:{shard}"

    def fence_key(self, shard: int) -> str:
        """The key counting the shard's acquisitions (its fencing tokens)."""
        return f"{self.tag}:fence:{shard}"

    async def heartbeat(self, node_id: str, ttl_seconds: float) -> frozenset[str]:
        _check_node(node_id)
        alive = await self._scripts["heartbeat"](
            keys=[self.nodes_key], args=[node_id, _ms(ttl_seconds)]
        )
        return frozenset(_text(node) for node in alive)

    async def leave(self, node_id: str) -> None:
        await self._redis.zrem(self.nodes_key, node_id)

    async def acquire(
        self, node_id: str, shards: Collection[int], ttl_seconds: float
    ) -> dict[int, int]:
        _check_node(node_id)
        order = sorted(shards)
        if not order:
            return {}
        keys = [key for shard in order for key in (self.lease_key(shard), self.fence_key(shard))]
        tokens = await self._scripts["acquire"](keys=keys, args=[node_id, _ms(ttl_seconds)])
        return {shard: int(token) for shard, token in zip(order, tokens, strict=True) if token}

    async def renew(
        self, node_id: str, tokens: Mapping[int, int], ttl_seconds: float
    ) -> frozenset[int]:
        order = sorted(tokens)
        if not order:
            return frozenset()
        kept = await self._scripts["renew"](
            keys=[self.lease_key(shard) for shard in order],
            args=[_ms(ttl_seconds), *(f"{node_id}:{tokens[shard]}" for shard in order)],
        )
        return frozenset(shard for shard, ok in zip(order, kept, strict=True) if ok)

    async def release(self, node_id: str, tokens: Mapping[int, int]) -> None:
        order = sorted(tokens)
        if order:
            await self._scripts["release"](
                keys=[self.lease_key(shard) for shard in order],
                args=[f"{node_id}:{tokens[shard]}" for shard in order],
            )

    async def holders(self, shards: Collection[int]) -> dict[int, tuple[str, int]]:
        """Shard → (node, token) of each lease held now (for stats and tests)."""
        order = sorted(shards)
        if not order:
            return {}
        values = await self._redis.mget([self.lease_key(shard) for shard in order])
        held: dict[int, tuple[str, int]] = {}
        for shard, value in zip(order, values, strict=True):
            if value is not None:
                node, _, token = _text(value).rpartition(":")
                held[shard] = (node, int(token))
        return held

    async def delete_all(self, shards: Collection[int]) -> None:
        """Remove the membership, leases and fencing counters (tests and teardown only:
        a counter removed while a node still holds a lease would let tokens repeat)."""
        keys = [self.nodes_key]
        keys += [key for shard in shards for key in (self.lease_key(shard), self.fence_key(shard))]
        await self._redis.delete(*keys)


def _check_node(node_id: str) -> None:
    if not node_id or node_id != node_id.strip():
        raise ValueError(f"node id {node_id!r} must be non-empty, without surrounding spaces")

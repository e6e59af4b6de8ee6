"""The port of shard ownership: node membership and fenced per-shard leases.

Every call is atomic on the server and answers in one round trip, however many shards it
names. Leases are values ``node:token`` with a time to live; ``token`` is the shard's fencing
token, taken from a per-shard counter that only grows, so a holder recognises its own lease
exactly and an old holder can never renew or release a newer one.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Protocol


class ShardLeases(Protocol):
    """Membership and shard leases shared by every node of a deployment."""

    async def heartbeat(self, node_id: str, ttl_seconds: float) -> frozenset[str]:
        """Mark ``node_id`` alive for ``ttl_seconds``; the nodes alive now (itself included)."""
        ...

    async def leave(self, node_id: str) -> None:
        """Take ``node_id`` out of the membership at once (a clean stop)."""
        ...

    async def acquire(
        self, node_id: str, shards: Collection[int], ttl_seconds: float
    ) -> dict[int, int]:
        """Take each of ``shards`` that no node holds; shard → its new fencing token, for
        the ones taken (each token is larger than any earlier token of that shard)."""
        ...

    async def renew(
        self, node_id: str, tokens: Mapping[int, int], ttl_seconds: float
    ) -> frozenset[int]:
        """Extend the leases still held as ``node_id`` with these tokens; the shards extended
        (a shard missing from the answer was lost: expired or taken by another node)."""
        ...

    async def release(self, node_id: str, tokens: Mapping[int, int]) -> None:
        """Give up the leases still held as ``node_id`` with these tokens."""
        ...

    async def holders(self, shards: Collection[int]) -> dict[int, tuple[str, int]]:
        """Shard → (node, fencing token) of each lease held now (for stats)."""
        ...

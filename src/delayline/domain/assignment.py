"""Which node owns which shard: a pure function of the shard count and the live nodes.

Rendezvous hashing with bounded loads. Every (node, shard) pair gets a stable pseudo-random
weight; pairs are taken heaviest first and a shard goes to the first node that still has room.
Room is exact: every node ends with ``shards // nodes`` shards, and ``shards % nodes`` of them
with one more, so the work is as even as it can be. Because the weights do not depend on the
other nodes, a node joining or leaving moves about its own share of shards and few others
(``tests/unit/test_assignment.py`` measures it), unlike consecutive ranges, which shift the
boundaries of every node after the one that changed.

Every node computes the same answer from the same membership, so no coordinator is needed;
the fenced leases make a disagreement during a membership change harmless (a shard is taken
only once its previous owner has let it go or its lease has run out).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def shard_weight(node: str, shard: int) -> int:
    """A stable pseudo-random weight of the pair (the same in every process and version)."""
    digest = hashlib.blake2b(f"{node}\x00{shard}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign_shards(shard_count: int, nodes: Iterable[str]) -> dict[int, str]:
    """The owner of each shard ``0..shard_count-1`` among ``nodes`` (empty when no node)."""
    if shard_count < 0:
        raise ValueError("shard_count must not be negative")
    members = sorted(set(nodes))
    if not members:
        return {}
    base, extras = divmod(shard_count, len(members))
    pairs = sorted(
        (
            (shard_weight(node, shard), node, shard)
            for node in members
            for shard in range(shard_count)
        ),
        reverse=True,
    )
    load = dict.fromkeys(members, 0)
    owner: dict[int, str] = {}
    for _weight, node, shard in pairs:
        if shard in owner:
            continue
        if load[node] < base:
            load[node] += 1
        elif load[node] == base and extras > 0:
            load[node] += 1
            extras -= 1
        else:
            continue
        owner[shard] = node
    return owner


def shards_of(node: str, shard_count: int, nodes: Iterable[str]) -> frozenset[int]:
    """The shards ``node`` should own among ``nodes`` (none when it is not among them)."""
    return frozenset(s for s, owner in assign_shards(shard_count, nodes).items() if owner == node)

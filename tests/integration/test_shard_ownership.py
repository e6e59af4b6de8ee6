"""Shard ownership against the session's real Valkey: several nodes in one process, short
leases, and a sampler that checks at every sample that no shard is owned by two nodes and
that each shard's fencing token only grows."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from redis.asyncio import Redis

from delayline.adapters.embedded import EmbeddedValkey
from delayline.adapters.redis_ownership import RedisShardLeases
from delayline.domain.assignment import shards_of
from delayline.services.ownership import ShardOwnership

SHARDS = 8
LEASE = 1.5
SLACK = 1.5
"""Room for a loaded machine in the "within the lease time" checks (scheduling delays)."""


@dataclass
class Node:
    ownership: ShardOwnership
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    handed_back: list[frozenset[int]] = field(default_factory=list)
    still_owned_in_hook: frozenset[int] = frozenset()

    def start(self) -> None:
        self.task = asyncio.create_task(self.ownership.run(self.stop))

    async def die(self) -> None:
        """Stop without releasing anything, as a killed process would."""
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def shutdown(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task
        await self.ownership.release_all()


class Sampler:
    """Samples every node's ``owned()`` and ``tokens()`` until stopped."""

    def __init__(self, nodes: list[Node]):
        self.nodes = nodes
        self.samples = 0
        self.violations: list[str] = []
        self.highest_token: dict[int, tuple[int, str]] = {}
        self._task: asyncio.Task[None] | None = None

    def check(self) -> None:
        seen: dict[int, str] = {}
        for node in self.nodes:
            name = node.ownership.node_id
            for shard, token in node.ownership.tokens().items():
                if shard in seen:
                    self.violations.append(f"shard {shard} owned by {seen[shard]} and {name}")
                seen[shard] = name
                last = self.highest_token.get(shard)
                if last is not None and (token < last[0] or (token == last[0] and last[1] != name)):
                    self.violations.append(f"shard {shard}: token {token} of {name} after {last}")
                if last is None or token > last[0]:
                    self.highest_token[shard] = (token, name)
        self.samples += 1

    async def _loop(self) -> None:
        while True:
            self.check()
            await asyncio.sleep(0.01)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@pytest.fixture
async def leases(redis_client: Redis, unique: str) -> AsyncIterator[RedisShardLeases]:
    adapter = RedisShardLeases(redis_client, prefix=f"own-{unique}")
    yield adapter
    await adapter.delete_all(range(SHARDS))


def make_node(leases: RedisShardLeases, name: str) -> Node:
    async def hand_back(shards: frozenset[int]) -> None:
        # The hook must run after the shards left owned(): the dispatcher no longer claims
        # there. (An assertion here would be swallowed by the service's guard.)
        node.handed_back.append(shards)
        node.still_owned_in_hook |= shards & node.ownership.owned()

    node = Node(ShardOwnership(leases, name, SHARDS, lease_seconds=LEASE, on_hand_back=hand_back))
    return node


async def wait_for(condition: Callable[[], bool], within: float) -> float:
    """Seconds until ``condition`` held; fails if it did not within ``within`` seconds."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within, "condition not reached in time"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def settled(nodes: list[Node]) -> bool:
    """Every shard owned, each node exactly its share of the live ones."""
    names = [n.ownership.node_id for n in nodes]
    return all(n.ownership.owned() == shards_of(n.ownership.node_id, SHARDS, names) for n in nodes)


async def test_nodes_share_every_shard_without_overlap(leases: RedisShardLeases) -> None:
    nodes = [make_node(leases, f"node-{i}") for i in range(3)]
    sampler = Sampler(nodes)
    sampler.start()
    for node in nodes:
        node.start()
    await wait_for(lambda: settled(nodes), 3 * LEASE + SLACK)
    owned = [node.ownership.owned() for node in nodes]
    assert frozenset().union(*owned) == frozenset(range(SHARDS))
    assert sorted(len(o) for o in owned) == [2, 3, 3]
    holders = await leases.holders(range(SHARDS))
    assert {shard: node for shard, (node, _token) in holders.items()} == {
        shard: node.ownership.node_id for node in nodes for shard in node.ownership.owned()
    }
    for node in nodes:
        await node.shutdown()
    await sampler.stop()
    assert sampler.violations == []
    assert await leases.holders(range(SHARDS)) == {}, "a clean stop releases every lease"


async def test_a_dead_node_loses_its_shards_to_the_others_within_the_lease(
    leases: RedisShardLeases,
) -> None:
    nodes = [make_node(leases, f"node-{i}") for i in range(3)]
    sampler = Sampler(nodes)
    sampler.start()
    for node in nodes:
        node.start()
    await wait_for(lambda: settled(nodes), 3 * LEASE + SLACK)
    dead, survivors = nodes[2], nodes[:2]
    orphaned = dead.ownership.owned()
    tokens_before = dead.ownership.tokens()
    await dead.die()
    # The dead node's last renewal was at most a tick ago: its heartbeat and leases run out
    # within the lease; the others see that on their next tick.
    elapsed = await wait_for(
        lambda: settled(survivors), LEASE + dead.ownership.period_seconds + SLACK
    )
    assert elapsed > 0
    assert dead.ownership.owned() == frozenset(), "its own view stopped claiming too"
    holders = await leases.holders(orphaned)
    assert {node for node, _ in holders.values()} <= {n.ownership.node_id for n in survivors}
    assert all(holders[s][1] > tokens_before[s] for s in orphaned), "tokens only grow"
    assert sum(n.ownership.acquisitions for n in survivors) >= SHARDS
    for node in survivors:
        await node.shutdown()
    await sampler.stop()
    assert sampler.violations == []
    assert sampler.samples > 50


async def test_a_joining_node_takes_its_share_only_once_handed_back(
    leases: RedisShardLeases,
) -> None:
    nodes = [make_node(leases, f"node-{i}") for i in range(2)]
    sampler = Sampler(nodes)
    sampler.start()
    for node in nodes:
        node.start()
    await wait_for(lambda: settled(nodes), 3 * LEASE + SLACK)
    joiner = make_node(leases, "node-joiner")
    nodes.append(joiner)
    joiner.start()
    await wait_for(lambda: settled(nodes), 3 * LEASE + SLACK)
    share = joiner.ownership.owned()
    assert share == shards_of("node-joiner", SHARDS, [n.ownership.node_id for n in nodes])
    assert len(share) >= SHARDS // 3
    handed_back = frozenset().union(*(s for n in nodes[:2] for s in n.handed_back))
    assert share <= handed_back, "the joiner took only what the old owners had handed back"
    assert sum(n.ownership.lease_losses for n in nodes) == 0, "nothing was taken by force"
    assert all(not n.still_owned_in_hook for n in nodes), "claiming stopped before the hook"
    for node in nodes:
        await node.shutdown()
    await sampler.stop()
    assert sampler.violations == []
    assert sampler.samples > 50


class Cuttable:
    """A loopback TCP proxy to the Valkey server that can be cut (a network partition)."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()


async def test_a_node_cut_off_from_redis_stops_claiming_at_its_local_deadline(
    valkey: EmbeddedValkey, leases: RedisShardLeases, unique: str
) -> None:
    proxy = Cuttable(valkey.port)
    port = await proxy.start()
    cut_client = Redis(host="127.0.0.1", port=port, password=valkey.password)
    cut_off = make_node(RedisShardLeases(cut_client, prefix=f"own-{unique}"), "node-cut")
    other = make_node(leases, "node-other")
    nodes = [cut_off, other]
    sampler = Sampler(nodes)
    sampler.start()
    for node in nodes:
        node.start()
    try:
        await wait_for(lambda: settled(nodes), 3 * LEASE + SLACK)
        mine = cut_off.ownership.owned()
        assert mine
        await proxy.cut()
        # Its leases were renewed at most a tick before the cut; its local deadline is the
        # lease minus the margin after that, before the server frees them.
        await wait_for(lambda: not cut_off.ownership.owned(), LEASE + SLACK)
        await wait_for(lambda: other.ownership.owned() == frozenset(range(SHARDS)), LEASE + SLACK)
        # The loop counts the losses at its next tick (each tick is bounded by its period).
        await wait_for(lambda: cut_off.ownership.lease_losses >= len(mine), LEASE + SLACK)
        assert cut_off.ownership.errors > 0
        assert cut_off.task is not None and not cut_off.task.done(), "the loop keeps trying"
    finally:
        await cut_off.die()
        await other.shutdown()
        await sampler.stop()
        await cut_client.aclose()
    assert sampler.violations == []


async def test_a_restarted_node_takes_its_own_leases_back_at_once(
    leases: RedisShardLeases,
) -> None:
    """Leases held under a node id go back to that id at once, with a larger token (its
    previous process is gone: ids are unique among running processes); another id waits."""
    first = await leases.acquire("node-a", range(SHARDS), ttl_seconds=600)
    assert sorted(first) == list(range(SHARDS))
    assert await leases.acquire("node-b", range(SHARDS), ttl_seconds=600) == {}
    again = await leases.acquire("node-a", range(SHARDS), ttl_seconds=600)
    assert sorted(again) == list(range(SHARDS))
    assert all(again[shard] > first[shard] for shard in range(SHARDS))
    holders = await leases.holders(range(SHARDS))
    assert {shard: holder for shard, (holder, _token) in holders.items()} == dict.fromkeys(
        range(SHARDS), "node-a"
    )
    # a node id that only starts like another's is another node
    assert await leases.acquire("node-", range(SHARDS), ttl_seconds=600) == {}

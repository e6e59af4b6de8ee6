"""ShardOwnership's logic with an in-memory lease table and a hand-driven clock."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import pytest

from delayline.services.ownership import ShardOwnership


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class MemoryLeases:
    """Leases in a dict; ``round_trip`` seconds pass on the clock during every call."""

    def __init__(self, clock: Clock, round_trip: float = 0.0):
        self.clock = clock
        self.round_trip = round_trip
        self.nodes: set[str] = set()
        self.held: dict[int, tuple[str, int]] = {}
        self.fence: dict[int, int] = {}
        self.calls: list[str] = []

    def _pass(self, name: str) -> None:
        self.calls.append(name)
        self.clock.now += self.round_trip

    async def heartbeat(self, node_id: str, ttl_seconds: float) -> frozenset[str]:
        self._pass("heartbeat")
        self.nodes.add(node_id)
        return frozenset(self.nodes)

    async def leave(self, node_id: str) -> None:
        self._pass("leave")
        self.nodes.discard(node_id)

    async def acquire(
        self, node_id: str, shards: Collection[int], ttl_seconds: float
    ) -> dict[int, int]:
        self._pass("acquire")
        taken = {}
        for shard in shards:
            if shard not in self.held:
                self.fence[shard] = self.fence.get(shard, 0) + 1
                self.held[shard] = (node_id, self.fence[shard])
                taken[shard] = self.fence[shard]
        return taken

    async def renew(
        self, node_id: str, tokens: Mapping[int, int], ttl_seconds: float
    ) -> frozenset[int]:
        self._pass("renew")
        return frozenset(s for s, t in tokens.items() if self.held.get(s) == (node_id, t))

    async def holders(self, shards: Collection[int]) -> dict[int, tuple[str, int]]:
        return {s: self.held[s] for s in shards if s in self.held}

    async def release(self, node_id: str, tokens: Mapping[int, int]) -> None:
        self._pass("release")
        for shard, token in tokens.items():
            if self.held.get(shard) == (node_id, token):
                del self.held[shard]


def ownership(leases: MemoryLeases, node: str = "a") -> ShardOwnership:
    return ShardOwnership(
        leases,
        node,
        4,
        lease_seconds=3.0,
        safety_margin_seconds=0.5,
        monotonic=leases.clock,
    )


async def test_the_local_deadline_counts_from_the_request_sent_minus_the_margin() -> None:
    clock = Clock()
    leases = MemoryLeases(clock, round_trip=0.2)
    own = ownership(leases)
    await own.rebalance_once()  # heartbeat 100.0 → 100.2, acquire sent at 100.2
    assert own.owned() == frozenset(range(4))
    assert own.tokens() == dict.fromkeys(range(4), 1)
    clock.now = 100.2 + 3.0 - 0.5 - 0.001
    assert own.owned() == frozenset(range(4))
    clock.now = 100.2 + 3.0 - 0.5
    assert own.owned() == frozenset(), "no tick needed: owned() reads the deadline"
    assert own.tokens() == {}


async def test_a_renewal_moves_the_deadline_and_a_lost_lease_is_dropped() -> None:
    clock = Clock()
    leases = MemoryLeases(clock)
    own = ownership(leases)
    await own.rebalance_once()
    clock.now += 2.0
    leases.held[2] = ("b", 7)  # taken over meanwhile (it had expired on the server)
    await own.rebalance_once()
    assert own.owned() == {0, 1, 3}
    assert own.lease_losses == 1
    clock.now += 2.0  # past the first deadline, before the renewed one
    assert own.owned() == {0, 1, 3}


async def test_a_new_member_gets_shards_handed_back_before_their_release() -> None:
    clock = Clock()
    leases = MemoryLeases(clock)
    order: list[str] = []

    async def hook(shards: frozenset[int]) -> None:
        order.append(f"hook {sorted(shards)}; owned {sorted(first.owned())}")
        order.append(f"still held {[s for s in shards if s in leases.held]}")

    first = ShardOwnership(leases, "a", 4, lease_seconds=3.0, monotonic=clock, on_hand_back=hook)
    await first.rebalance_once()
    second = ShardOwnership(leases, "b", 4, lease_seconds=3.0, monotonic=clock)
    await second.rebalance_once()
    assert second.owned() == frozenset(), "the old owner has not handed anything back yet"
    await first.rebalance_once()
    await second.rebalance_once()
    assert first.owned() | second.owned() == frozenset(range(4))
    assert not first.owned() & second.owned()
    assert first.hand_backs == len(second.owned()) > 0
    assert order[0] == f"hook {sorted(second.owned())}; owned {sorted(first.owned())}"
    assert order[1] == f"still held {sorted(second.owned())}"
    assert all(token == 2 for token in second.tokens().values())


async def test_release_all_leaves_and_gives_everything_back() -> None:
    clock = Clock()
    leases = MemoryLeases(clock)
    own = ownership(leases)
    await own.rebalance_once()
    await own.release_all()
    assert own.owned() == frozenset()
    assert leases.held == {}
    assert leases.nodes == set()
    assert leases.calls[-2:] == ["leave", "release"]


@pytest.mark.parametrize(
    ("shards", "lease", "margin", "message"),
    [
        (0, 3.0, None, "shard_count"),
        (4, 0.0, None, "lease_seconds"),
        (4, 3.0, 1.5, "margin"),
        (4, 3.0, -0.1, "margin"),
    ],
)
def test_bad_settings_are_refused(
    shards: int, lease: float, margin: float | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ShardOwnership(
            MemoryLeases(Clock()), "a", shards, lease_seconds=lease, safety_margin_seconds=margin
        )

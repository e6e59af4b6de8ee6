"""Which shards this node fires: membership by heartbeat, shards divided among the live nodes
(``domain.assignment``), each owned shard held under a fenced lease.

Every tick (a third of the lease) the node heartbeats, learns the live nodes, computes the
shards it should own, renews the leases it keeps, tries to take the ones it lacks (a lease is
taken only when free) and hands back the ones it should no longer own. The rules that keep two
nodes from claiming one shard at once:

- a node hands a shard back by first dropping it from :meth:`ShardOwnership.owned` (its
  dispatcher stops claiming there), then letting the ``on_hand_back`` hook finish (in-flight
  claims complete), and only then deleting the lease, so the next owner, which starts only
  once it has taken the lease, never overlaps with it;
- a node dead or cut off stops renewing; its heartbeat and its leases run out within the
  lease time and the others take its shards;
- a node counts a lease as lost at its own deadline: the moment it sent the request that took
  or renewed the lease, plus the lease, minus a safety margin. The server started the lease's
  time to live later than that moment, so the node stops claiming before the server frees
  the lease, even if the server cannot be reached to say so. :meth:`owned` reads the deadline
  on every call, so this holds even while the loop is stuck. The margin covers clock-rate
  differences and the round trip of a claim started just before the deadline.

The per-event claim tokens of the near-term store stay the last fence: an event is claimed by
one claim at a time whatever the leases say.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from delayline.domain.assignment import shards_of
from delayline.ports import ShardLeases

log = logging.getLogger(__name__)

HandBack = Callable[[frozenset[int]], Awaitable[None]]
"""Called with shards just dropped from ``owned()``, before their leases are released: the
dispatcher lets its claims in flight there finish."""


@dataclass(frozen=True, slots=True)
class _Held:
    token: int
    deadline: float  # on the local monotonic clock


class ShardOwnership:
    """This node's share of ``shard_count`` shards, kept under fenced leases."""

    def __init__(
        self,
        leases: ShardLeases,
        node_id: str,
        shard_count: int,
        *,
        lease_seconds: float,
        safety_margin_seconds: float | None = None,
        on_hand_back: HandBack | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if shard_count <= 0:
            raise ValueError("shard_count must be positive")
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        margin = lease_seconds / 5 if safety_margin_seconds is None else safety_margin_seconds
        if not 0 <= margin < lease_seconds / 2:
            raise ValueError("the safety margin must be at least 0 and under half the lease")
        self.node_id = node_id
        self.shard_count = shard_count
        self.lease_seconds = lease_seconds
        self.safety_margin_seconds = margin
        self.period_seconds = lease_seconds / 3
        self._leases = leases
        self._on_hand_back = on_hand_back
        self._monotonic = monotonic
        self._held: dict[int, _Held] = {}
        self._wanted: frozenset[int] = frozenset()
        self.live_nodes: frozenset[str] = frozenset()
        self.acquisitions = 0
        """Leases taken (a shard newly owned, at start, on a join, or from a dead node)."""
        self.lease_losses = 0
        """Leases lost without handing them back: expired locally or taken over."""
        self.hand_backs = 0
        """Shards given back to the membership's choice of another node."""
        self.errors = 0
        """Ticks that failed to reach the server."""

    def owned(self) -> frozenset[int]:
        """The shards this node may claim from now: held, and before their local deadline."""
        now = self._monotonic()
        return frozenset(shard for shard, held in self._held.items() if held.deadline > now)

    def tokens(self) -> dict[int, int]:
        """Fencing token of each owned shard."""
        now = self._monotonic()
        return {shard: held.token for shard, held in self._held.items() if held.deadline > now}

    def status(self) -> dict[str, Any]:
        """Figures for health and metrics."""
        return {
            "node_id": self.node_id,
            "shards": self.shard_count,
            "owned": sorted(self.owned()),
            "live_nodes": len(self.live_nodes),
            "acquisitions": self.acquisitions,
            "lease_losses": self.lease_losses,
            "hand_backs": self.hand_backs,
            "errors": self.errors,
        }

    async def run(self, stop_event: asyncio.Event) -> None:
        """Heartbeat and rebalance until ``stop_event``; then call :meth:`release_all`."""
        while not stop_event.is_set():
            try:
                # Bounded: a server that stops answering must not hold the loop (owned()
                # shrinks at the deadlines regardless; the bound lets the node retry).
                async with asyncio.timeout(self.period_seconds):
                    await self.rebalance_once()
            except Exception as exc:  # unreachable or failing server: retry next tick
                self.errors += 1
                log.warning("shard ownership tick failed (node %s): %s", self.node_id, exc)
            self._forget_expired()
            pending = self._wanted - self._held.keys()
            # Retry sooner while a shard this node should own is still held by another.
            pause = self.period_seconds / 4 if pending else self.period_seconds
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_event.wait(), timeout=pause)

    async def rebalance_once(self) -> None:
        """One tick: heartbeat, renew what stays, take what is free, hand back the rest."""
        self.live_nodes = await self._leases.heartbeat(self.node_id, self.lease_seconds)
        self._wanted = shards_of(self.node_id, self.shard_count, self.live_nodes)
        self._forget_expired()
        await self._renew({s: h.token for s, h in self._held.items() if s in self._wanted})
        await self._acquire(self._wanted - self._held.keys())
        surplus = frozenset(self._held.keys() - self._wanted)
        if surplus:
            await self._hand_back(surplus)

    async def release_all(self) -> None:
        """Stop claiming everywhere, leave the membership and give every lease up (a clean
        stop: the others take the shards on their next tick, not after the lease). Call it
        once :meth:`run` has returned."""
        surplus = frozenset(self._held)
        self._wanted = frozenset()
        try:
            await self._leases.leave(self.node_id)
            await self._hand_back(surplus)
        except Exception as exc:  # what was not released expires by itself
            self._held.clear()
            log.warning("releasing shards on stop failed: %s", exc)

    async def _renew(self, tokens: dict[int, int]) -> None:
        if not tokens:
            return
        sent = self._monotonic()
        kept = await self._leases.renew(self.node_id, tokens, self.lease_seconds)
        for shard, token in tokens.items():
            if shard in kept:
                self._held[shard] = _Held(token, self._deadline(sent))
            elif self._held.pop(shard, None) is not None:
                self.lease_losses += 1
                log.warning("shard %d: lease lost (expired or taken over)", shard)

    async def _acquire(self, shards: frozenset[int]) -> None:
        if not shards:
            return
        sent = self._monotonic()
        taken = await self._leases.acquire(self.node_id, shards, self.lease_seconds)
        for shard, token in taken.items():
            self._held[shard] = _Held(token, self._deadline(sent))
            self.acquisitions += 1
        if taken:
            log.info("shards %s taken (node %s)", sorted(taken), self.node_id)

    async def _hand_back(self, shards: frozenset[int]) -> None:
        """Drop from ``owned()`` first, let the hook finish, then release the leases."""
        tokens = {shard: self._held.pop(shard).token for shard in shards if shard in self._held}
        if not tokens:
            return
        if self._on_hand_back is not None:
            try:
                # Bounded: the leases this node keeps must still be renewed in time.
                await asyncio.wait_for(self._on_hand_back(frozenset(tokens)), self.period_seconds)
            except Exception as exc:  # the shards are no longer claimed here either way
                log.warning("handing back shards %s: %s", sorted(tokens), exc)
        self.hand_backs += len(tokens)
        # A release that fails costs only time: the leases expire by themselves.
        await self._leases.release(self.node_id, tokens)
        log.info("shards %s handed back (node %s)", sorted(tokens), self.node_id)

    def _deadline(self, sent: float) -> float:
        return sent + self.lease_seconds - self.safety_margin_seconds

    def _forget_expired(self) -> None:
        now = self._monotonic()
        for shard in [s for s, held in self._held.items() if held.deadline <= now]:
            del self._held[shard]
            self.lease_losses += 1
            log.warning("shard %d: lease deadline passed without renewal; no longer claimed", shard)

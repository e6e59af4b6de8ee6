"""The sync's distributed lock: a lease with a fencing token, on Redis.

Why Redis and not a ClickHouse table: ClickHouse has no atomic compare-and-set. A lock there
would be an INSERT followed by a read (``FINAL``) to see who won, which two nodes can both
"win" between merges, and whose expiry would need clock agreement across nodes; making it
sound takes ClickHouse Keeper, which the embedded chDB does not have. The Redis server is
always present (it is the near-term tier), and ``SET NX PX`` plus ``INCR`` in one script is
atomic.

The token increases with every acquisition of a key (a counter beside it, never reset), so a
holder that paused past its lease sees, on :meth:`RedisLease.renew`, that it lost the lease,
and any store that records the token can refuse writes carrying an older one. The lock does
not have to be perfect for correctness: the sync's Redis inserts are idempotent and its
ClickHouse writes are versioned (``long_term_store``); the lease keeps nodes from doing the
same work twice.
"""

from __future__ import annotations

import re
import uuid

from delayline.adapters.redis_connect import RedisClient
from delayline.adapters.redis_scripts import read_lua

_TAGGED = re.compile(r"\{[^{}]+\}")


class RedisLease:
    """A lease on ``key`` held for ``ttl`` seconds unless renewed, with a fencing token.

    ``key`` must contain a hash tag such as ``{delayline}``: the lock and its counter
    (``key + ':fence'``) then live in one Cluster slot, beside the rest of the prefix's keys.
    One instance is one contender; use one per node.
    """

    def __init__(
        self, redis_client: RedisClient, key: str, ttl: float, *, owner: str | None = None
    ):
        if not _TAGGED.search(key):
            raise ValueError(f"lock key {key!r} must contain a hash tag such as '{{prefix}}'")
        if owner is not None and "|" in owner:
            raise ValueError("lease owner must not contain '|'")
        if ttl <= 0:
            raise ValueError("lease ttl must be positive")
        self.key = key
        self.fence_key = f"{key}:fence"
        self.ttl = ttl
        self.owner = owner or uuid.uuid4().hex
        self._redis = redis_client
        self._acquire = redis_client.register_script(read_lua("lease_acquire"))
        self._renew = redis_client.register_script(read_lua("lease_renew"))
        self._release = redis_client.register_script(read_lua("lease_release"))
        self._token: int | None = None

    @property
    def token(self) -> int | None:
        """The fencing token of the lease this instance holds (as far as it knows), or None."""
        return self._token

    def _ttl_ms(self) -> int:
        return max(1, int(self.ttl * 1000))

    async def acquire(self) -> int | None:
        """Take the lease if free (or extend it if already ours); its fencing token, or None
        when another owner holds it."""
        result = await self._acquire(
            keys=[self.key, self.fence_key], args=[self.owner, self._ttl_ms()]
        )
        self._token = None if result is None else int(result)
        return self._token

    async def renew(self) -> int | None:
        """Extend the lease; its token, or None if it was lost (expired, taken by another)."""
        if self._token is None:
            return None
        value = f"{self.owner}|{self._token}"
        if await self._renew(keys=[self.key], args=[value, self._ttl_ms()]):
            return self._token
        self._token = None
        return None

    async def release(self) -> bool:
        """Give the lease up if still ours; True if it was released (idempotent)."""
        if self._token is None:
            return False
        value = f"{self.owner}|{self._token}"
        self._token = None
        return bool(await self._release(keys=[self.key], args=[value]))

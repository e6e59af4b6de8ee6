"""Every implementation of a port, as one parametrized fixture per port.

Each contract test runs once per implementation: the real adapter on the real server of the
session (``tests/conftest.py``), the adapter behind its circuit breaker, and the forwarding
wrappers the sync's fault tests build on. A new implementation of a port joins its list here.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from delayline.adapters.clickhouse.client import ClickHouseClient
from delayline.adapters.clickhouse.lifecycle_store import ClickHouseLifecycleStore
from delayline.adapters.clickhouse.long_term_store import ClickHouseLongTermStore, DuePage
from delayline.adapters.guarded import (
    GuardedLifecycleStore,
    GuardedLongTermStore,
    GuardedNearTermStore,
)
from delayline.adapters.redis_store import RedisNearTermStore
from delayline.ports import LifecycleStore, LongTermStore, NearTermStore
from delayline.resilience import CircuitBreaker
from tests.support import ForwardingFar, ForwardingNear


def _breaker(name: str) -> CircuitBreaker:
    return CircuitBreaker(name, failure_threshold=1000)


NEAR: dict[str, Callable[[RedisNearTermStore], NearTermStore]] = {
    "redis": lambda store: store,
    "guarded": lambda store: GuardedNearTermStore(store, _breaker("redis")),
    "forwarding": ForwardingNear,
}

FAR: dict[str, Callable[[ClickHouseLongTermStore], LongTermStore[DuePage]]] = {
    "clickhouse": lambda store: store,
    "guarded": lambda store: GuardedLongTermStore(store, _breaker("clickhouse")),
    "forwarding": ForwardingFar,
}

LIFECYCLE: dict[str, Callable[[ClickHouseLifecycleStore], LifecycleStore]] = {
    "clickhouse": lambda store: store,
    "guarded": lambda store: GuardedLifecycleStore(store, _breaker("clickhouse")),
}


@pytest.fixture(params=sorted(NEAR))
def near(request: pytest.FixtureRequest, store: RedisNearTermStore) -> NearTermStore:
    """The near-term store, as each implementation."""
    return NEAR[request.param](store)


@pytest.fixture(params=sorted(FAR))
def far(
    request: pytest.FixtureRequest, lt_store: ClickHouseLongTermStore
) -> LongTermStore[DuePage]:
    """The long-term store, as each implementation."""
    return FAR[request.param](lt_store)


@pytest.fixture(params=sorted(LIFECYCLE))
def lifecycle(request: pytest.FixtureRequest, ch_client: ClickHouseClient) -> LifecycleStore:
    """The lifecycle store, as each implementation."""
    return LIFECYCLE[request.param](ClickHouseLifecycleStore(ch_client))

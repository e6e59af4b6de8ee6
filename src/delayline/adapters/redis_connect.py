"""Connections to the near-term tier's Redis: one server, several servers, or a Cluster.

``SCHEDULES_REDIS_URL`` takes three forms:

- ``redis://host:port`` (or ``rediss://``): one server holds every shard;
- ``redis+cluster://host:port`` (or ``rediss+cluster://``): a Redis Cluster, found from that
  node; each shard's hash tag picks its slot, so shards spread over the masters. Several
  such URLs, comma-separated, name several nodes of the one Cluster to start from (a client
  that starts while one is down finds the Cluster through another; credentials and TLS come
  from the first);
- a comma-separated list of plain URLs: independent servers, shard ``k`` on server
  ``k mod M`` (the control keys on the first).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from redis._parsers.commands import AsyncCommandsParser
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, ClusterPubSub, RedisCluster
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

RedisClient = Redis | RedisCluster
"""A client of one server or of a whole Cluster."""

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def redis_client(
    url: str,
    *,
    max_connections: int,
    pool_timeout: float,
    command_timeout: float | None = None,
) -> Redis:
    """A Redis client whose pool waits up to ``pool_timeout`` for a free connection when all
    ``max_connections`` are in use (back-pressure), instead of failing at once.

    ``command_timeout`` bounds the wait for each answer (None: no bound, as the wake-up
    subscription needs); a command that timed out may still have run (outcome unknown).

    A connection that died with a restarted server fails once per pooled connection: commands
    are retried on a fresh one rather than lose, say, a whole batch's acknowledgement.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout,
        socket_timeout=command_timeout,
        health_check_interval=10,
        retry=Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), 3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return Redis.from_pool(pool)  # closing the client closes its pool


def cluster_client(
    urls: Sequence[str], *, max_connections: int, command_timeout: float | None = None
) -> RedisCluster:
    """A Cluster client from ``redis+cluster://`` (or ``rediss+cluster://``) URLs of its
    nodes (see the module docstring).

    It follows MOVED/ASK redirections and refreshes its slot map when a master fails over;
    ``max_connections`` is per node."""
    scheme, _, rest = urls[0].partition("://")
    others = [urlsplit(url) for url in urls[1:]]
    client = RedisCluster.from_url(
        f"{CLUSTER_SCHEMES[scheme]}://{rest}",
        startup_nodes=[ClusterNode(u.hostname or "localhost", u.port or 6379) for u in others],
        max_connections=max_connections,
        socket_timeout=command_timeout,
        retry=Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), 3),
    )
    client.commands_parser = CommandTableReadOnce()
    return client


class CommandTableReadOnce(AsyncCommandsParser):
    """The Cluster client's command table, read from a node once.

    redis-py reads it again from its default node (the first master in the slot map) each
    time it refreshes the map after an error. A master that died with no replica to take over
    stays in the map, and while it is that default node the refresh fails, and with it every
    command on every node. The table is the same on every node, so one read serves."""

    __slots__ = ()

    async def initialize(self, node: ClusterNode | None = None) -> None:
        if node is not None:
            self.node = node
        if not self.commands:
            await super().initialize(node)


def subscriber(client: RedisClient) -> PubSub | ClusterPubSub:
    """A pub/sub connection for channels published with ``PUBLISH``.

    A Cluster forwards such messages to every node, so any master serves; a random one each
    time, so subscribing again after a node died finds a live one (redis-py would pick the
    channel's slot owner, dead or not)."""
    if isinstance(client, RedisCluster) and (primaries := client.get_primaries()):
        return client.pubsub(node=random.choice(primaries), ignore_subscribe_messages=True)
    return client.pubsub(ignore_subscribe_messages=True)  # a Cluster not yet mapped: its owner


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster."""
    return url.partition("://")[0] in CLUSTER_SCHEMES


def split_urls(url: str) -> list[str]:
    """The URLs in ``url`` (one, or a comma-separated list); raises ValueError on an empty
    entry or a list mixing Cluster nodes and independent servers."""
    urls = [part.strip() for part in url.split(",")]
    if any(not part for part in urls):
        raise ValueError("the Redis URL list has an empty entry")
    clusters = sum(is_cluster_url(part) for part in urls)
    if clusters and clusters != len(urls):
        raise ValueError(
            "the Redis URL list mixes redis+cluster:// nodes with independent servers: "
            "name the nodes of one Cluster, or independent servers"
        )
    return urls


@dataclass(frozen=True)
class RedisServers:
    """The clients of the near-term tier: one per independent server, or one Cluster client.

    Shard ``k`` is on ``clients[k % len(clients)]``; the control keys on ``clients[0]``."""

    clients: tuple[RedisClient, ...]

    def for_shard(self, shard: int) -> RedisClient:
        """The client that holds shard ``shard``."""
        return self.clients[shard % len(self.clients)]

    @property
    def control(self) -> RedisClient:
        """The client of the keys that are not per shard."""
        return self.clients[0]

    async def ping(self) -> bool:
        """True when every server answers."""
        return all(await asyncio.gather(*(c.ping() for c in self.clients)))

    async def aclose(self) -> None:
        """Close every client."""
        for client in self.clients:
            await client.aclose()


def redis_servers(
    url: str,
    *,
    max_connections: int,
    pool_timeout: float,
    command_timeout: float | None = None,
) -> RedisServers:
    """Clients for the servers ``url`` names (see the module docstring)."""
    urls = split_urls(url)
    if is_cluster_url(urls[0]):
        cluster = cluster_client(
            urls, max_connections=max_connections, command_timeout=command_timeout
        )
        return RedisServers((cluster,))
    return RedisServers(
        tuple(
            redis_client(
                one,
                max_connections=max_connections,
                pool_timeout=pool_timeout,
                command_timeout=command_timeout,
            )
            for one in urls
        )
    )

"""The sync lease on the real Valkey."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from delayline.adapters.redis_lease import RedisLease


async def test_lease_is_exclusive_and_fencing_tokens_increase(
    redis_client: Redis, unique: str
) -> None:
    key = f"{{t-{unique}}}:lock:sync"
    first = RedisLease(redis_client, key, ttl=30)
    second = RedisLease(redis_client, key, ttl=30)
    try:
        token1 = await first.acquire()
        assert token1 is not None
        assert await first.acquire() == token1  # re-acquiring our own lease extends it
        assert await second.acquire() is None
        assert await first.renew() == token1
        assert await first.release() is True
        assert await first.release() is False
        token2 = await second.acquire()
        assert token2 is not None and token2 > token1
        assert await first.renew() is None
    finally:
        await redis_client.delete(key, f"{key}:fence")


async def test_an_expired_lease_is_lost_by_its_holder(redis_client: Redis, unique: str) -> None:
    key = f"{{t-{unique}}}:lock:sync"
    slow = RedisLease(redis_client, key, ttl=0.05)
    other = RedisLease(redis_client, key, ttl=30)
    try:
        token1 = await slow.acquire()
        assert token1 is not None
        await asyncio.sleep(0.2)  # well past the 50 ms lease: the key is gone
        assert await redis_client.exists(key) == 0
        token2 = await other.acquire()
        assert token2 is not None and token2 > token1
        assert await slow.renew() is None
        assert await slow.release() is False
        assert await redis_client.exists(key) == 1
    finally:
        await redis_client.delete(key, f"{key}:fence")


def test_key_needs_a_hash_tag(redis_client: Redis) -> None:
    with pytest.raises(ValueError, match="hash tag"):
        RedisLease(redis_client, "delayline:lock", ttl=1)

"""The near-term tier's Lua scripts (``adapters/lua``), registered on a client.

Every script touches the keys of one shard only (one hash tag), so it runs on a Cluster too.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from delayline.adapters.redis_connect import RedisClient

SCRIPT_NAMES = (
    "schedule",
    "upsert",
    "claim",
    "ack",
    "retry",
    "cancel",
    "reschedule",
    "reap",
    "get",
    "discard",
    "orphans",
    "park",
    "rekey",
    "unpark",
)


def read_lua(name: str) -> str:
    """The text of ``adapters/lua/<name>.lua``."""
    return resources.files("delayline.adapters").joinpath("lua", f"{name}.lua").read_text()


def load_script(name: str) -> str:
    """A near-term script with the shared helpers (value layout, revisions) prepended."""
    return read_lua("_member_of") + read_lua("_revision") + read_lua(name)


def register_scripts(client: RedisClient) -> dict[str, AsyncScript]:
    """Every script, registered on ``client`` (EVALSHA, loaded again on NOSCRIPT)."""
    return {name: client.register_script(load_script(name)) for name in SCRIPT_NAMES}


ScriptCall = tuple[AsyncScript, list[str], list[Any]]
"""A script with its keys and arguments."""


async def run_pipelined(client: RedisClient, calls: Sequence[ScriptCall]) -> list[Any]:
    """Run ``calls`` in one pipeline (not a transaction: other clients' commands run between
    them); their replies in order. The first error is raised once every call ran.

    A plain pipeline loads the scripts a server lacks first. A Cluster pipeline cannot (its
    calls go to several nodes): a call a node answered NOSCRIPT did not run there, so it is
    run again on its own, which loads the script (a master promoted by a failover has none).
    """
    if not calls:
        return []
    if not isinstance(client, RedisCluster):
        async with client.pipeline(transaction=False) as pipe:
            for script, keys, args in calls:
                await script(keys=keys, args=args, client=pipe)
            return list(await pipe.execute())
    async with client.pipeline() as cluster_pipe:
        for script, keys, args in calls:
            cluster_pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        replies = await cluster_pipe.execute(raise_on_error=False)
    out: list[Any] = []
    for (script, keys, args), reply in zip(calls, replies, strict=True):
        if isinstance(reply, NoScriptError):
            reply = await script(keys=keys, args=args)
        elif isinstance(reply, Exception):
            raise reply
        out.append(reply)
    return out

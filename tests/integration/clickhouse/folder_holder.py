"""Run as a subprocess: open a chDB folder with ClickHouseClient.

``hold``: print ``READY`` once open, keep it open until stdin closes.
``open``: try to open; print ``IN_USE <message>`` and exit 3 on ClickHouseFolderInUseError.
"""

from __future__ import annotations

import asyncio
import sys

from delayline.adapters.clickhouse.client import ClickHouseClient, ClickHouseFolderInUseError


async def main(mode: str, folder: str) -> int:
    client = ClickHouseClient(f"chdb://{folder}", "holder")
    try:
        await client.start()
    except ClickHouseFolderInUseError as exc:
        print(f"IN_USE {exc}", flush=True)
        return 3
    print("READY", flush=True)
    if mode == "hold":
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await client.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2])))

"""A dispatcher in its own process, configured by SCHEDULES_* variables (for kill tests)."""

from __future__ import annotations

import asyncio
import logging

from delayline.bootstrap import Application
from delayline.settings import load_settings


async def _main() -> None:
    app = Application(load_settings(), roles={"schedule", "fire"})
    await app.serve_forever()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(_main())

"""A dispatcher in its own process, configured by SCHEDULES_* variables (for kill tests)."""

from __future__ import annotations

import asyncio
import logging

from delayline.bootstrap import Application, Components
from delayline.settings import load_settings


async def _main() -> None:
    app = Application(load_settings(), components=Components(sync=False, consumer=False, api=False))
    await app.serve_forever()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(_main())

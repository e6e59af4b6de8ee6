"""Unit tests of the rotation loop over fake tiers (the tiers' own paging is tested against
the real servers)."""

from __future__ import annotations

import asyncio

from delayline.ports import RekeyPage
from delayline.services.rotation import KeyRotation


class PagedTier:
    def __init__(self, pages: list[RekeyPage], fail_at: int | None = None) -> None:
        self.pages = pages
        self.calls: list[str] = []
        self.fail_at = fail_at

    async def rekey_page(self, cursor: str, count: int) -> tuple[str, RekeyPage]:
        self.calls.append(cursor)
        i = int(cursor or 0)
        if i == self.fail_at:
            raise ConnectionError("server gone")
        nxt = str(i + 1) if i + 1 < len(self.pages) else ""
        return nxt, self.pages[i]


async def test_rotation_walks_every_page_of_every_tier_and_totals_them() -> None:
    redis = PagedTier([RekeyPage(500, 400, 1, 0), RekeyPage(20, 20, 0, 3)])
    clickhouse = PagedTier([RekeyPage(7, 7, 0, 0)])
    steps: list[str] = []
    rotation = KeyRotation(
        {"redis": redis, "clickhouse": clickhouse}, "k2", on_step=lambda t, p: steps.append(t)
    )
    status = rotation.start()
    assert rotation.start() is status  # one at a time
    await rotation.wait()
    assert status.state == "done" and status.error is None
    assert redis.calls == ["", "1"] and clickhouse.calls == [""]
    assert steps == ["redis", "redis", "clickhouse"]
    assert status.as_dict()["tiers"]["redis"] == {
        "scanned": 520,
        "rekeyed": 420,
        "unreadable": 1,
        "restored": 3,
        "done": True,
    }


async def test_a_failing_tier_fails_the_rotation_with_its_error_and_a_new_one_can_start() -> None:
    tier = PagedTier([RekeyPage(1, 1), RekeyPage(1, 1)], fail_at=1)
    rotation = KeyRotation({"redis": tier}, "k2")
    rotation.start()
    status = await rotation.wait()
    assert status.state == "failed"
    assert status.error == "ConnectionError: server gone"
    tier.fail_at = None
    again = rotation.start()
    assert again is not status
    assert (await rotation.wait()).state == "done"


async def test_stop_cancels_a_running_rotation() -> None:
    class Slow:
        async def rekey_page(self, cursor: str, count: int) -> tuple[str, RekeyPage]:
            await asyncio.sleep(60)
            return "", RekeyPage()

    rotation = KeyRotation({"redis": Slow()}, "k2")
    rotation.start()
    await rotation.stop()
    assert rotation.status.state == "failed" and rotation.status.error == "stopped"
    assert not rotation.running

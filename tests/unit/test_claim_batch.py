"""The claim size rule: twice what the last claim got, between the floor and the cap."""

from __future__ import annotations

import pytest

from delayline.services.claim_batch import ClaimBatchSize
from delayline.settings import load_settings


def sizes_while(rule: ClaimBatchSize, backlog: int) -> list[int]:
    """The sizes asked for while claims drain ``backlog`` due events (no new arrivals), up to
    the claim that comes back empty and the size asked for after it."""
    asked = [rule.first]
    while True:
        got = min(asked[-1], backlog)
        backlog -= got
        asked.append(rule.after(got))
        if got == 0:
            return asked


def test_idle_claims_ask_for_the_floor() -> None:
    rule = ClaimBatchSize(floor=100, cap=2000)
    assert rule.first == 100
    assert rule.after(0) == 100
    assert rule.after(3) == 100


def test_a_burst_doubles_full_claims_up_to_the_cap_then_shrinks_back() -> None:
    rule = ClaimBatchSize(floor=100, cap=2000)
    asked = sizes_while(rule, 10_000)
    assert asked[:6] == [100, 200, 400, 800, 1600, 2000]
    assert max(asked) == 2000
    assert asked[-3:] == [2000, 1800, 100]  # 900 left, then none: back to the floor


def test_a_part_full_claim_asks_for_twice_what_it_got() -> None:
    rule = ClaimBatchSize(floor=100, cap=2000)
    assert rule.after(2000) == 2000
    assert rule.after(700) == 1400
    assert rule.after(60) == 120


def test_a_cap_below_the_floor_wins() -> None:
    rule = ClaimBatchSize(floor=100, cap=50)
    assert rule.first == 50
    assert rule.after(50) == 50


@pytest.mark.parametrize(("floor", "cap"), [(0, 100), (100, 0), (-1, 10)])
def test_sizes_must_be_positive(floor: int, cap: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        ClaimBatchSize(floor=floor, cap=cap)


def test_the_defaults_adapt_between_100_and_2000() -> None:
    s = load_settings()
    assert (s.claim_batch_min_size, s.claim_batch_size) == (100, 2000)

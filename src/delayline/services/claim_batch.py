"""How many due events the dispatcher asks for in its next claim.

The rule: **twice what the last claim got, between a floor and a cap** (a cap below the floor
wins: every claim asks for the cap).

* Idle or light traffic: claims come back with a few events, so the next asks for the floor:
  small claims are quick, and what is due now fires at once.
* A burst: each claim comes back full, so the size doubles claim after claim up to the cap;
  large claims cut the per-claim cost (one script call, one round trip, one acknowledgement)
  that caps throughput with small ones.
* The backlog drains: a claim comes back part-full and the next asks for twice what it got,
  back down to the floor once nothing waits.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ClaimBatchSize:
    """The claim size rule (see the module docstring)."""

    floor: int
    cap: int

    def __post_init__(self) -> None:
        if self.floor < 1 or self.cap < 1:
            raise ValueError(
                f"claim batch sizes must be positive, not floor {self.floor}, cap {self.cap}"
            )

    @property
    def first(self) -> int:
        """The size of the first claim (nothing claimed yet)."""
        return self.after(0)

    def after(self, claimed: int) -> int:
        """The size of the next claim, given how many events the last one returned."""
        return min(self.cap, max(self.floor, 2 * claimed))

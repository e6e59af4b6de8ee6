"""Exponential backoff: the one rule every retry loop follows.

The dispatcher (publish retries, store outages), the ingress consumer (a batch that cannot
be stored), the batch recorders (a failed write), the firing process's restarts and the
circuit breakers' reset timeout all wait ``initial · 2^attempt`` capped at ``maximum``; the
loops that many processes run at once add jitter so they do not retry in step.
"""

from __future__ import annotations

import random

_MAX_DOUBLINGS = 30  # 2^30 × any sane initial is past any maximum; bounds the float


def backoff_ceiling(attempt: int, initial: float, maximum: float) -> float:
    """The wait before retry ``attempt`` (0 for the first): min(maximum, initial·2^attempt)."""
    return float(min(maximum, initial * (2 ** min(max(attempt, 0), _MAX_DOUBLINGS))))


def backoff_delay(attempt: int, initial: float, maximum: float) -> float:
    """:func:`backoff_ceiling` with jitter: a random delay in [½, 1] × the ceiling."""
    return backoff_ceiling(attempt, initial, maximum) * (0.5 + random.random() / 2)

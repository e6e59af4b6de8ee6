"""The sync's paging SQL: due events a page at a time, from the ``listed_at`` prefix alone.

A page is bounded by keys ``(lo, hi]`` in the sync's order — due time, then higher priority,
then id — so the next page can be read before the previous one is marked ``queued``. Why
reading the ``listed_at <= until`` rows is exact is in ``long_term_store``. Statements follow
``versions``: ``{table}`` filled in by Python, every value a parameter.
"""

from __future__ import annotations

from typing import Any

from delayline.adapters.clickhouse.rows import SELECT_COLUMNS
from delayline.adapters.clickhouse.versions import BLOCK, NEWEST, UNTIL
from delayline.domain.events import ScheduledEvent

PageKey = tuple[int, int, str]
"""An event's place in the sync's order: ``(due µs, -priority, schedule_id)``."""
START: PageKey = (-(2**63), -(2**63), "")
"""A key before every event's."""
END: PageKey = (2**63 - 1, 2**63 - 1, "\U0010ffff" * 8)
"""A key after every event's (ids are ASCII)."""

_KEY = "(toUnixTimestamp64Micro(scheduled_at), -toInt64(priority), schedule_id)"
_LO = "({lo_us:Int64}, {lo_rank:Int64}, {lo_id:String})"
_HI = "({hi_us:Int64}, {hi_rank:Int64}, {hi_id:String})"
_IN_PAGE = (
    f"listed_at <= {UNTIL} AND status = 'pending' AND scheduled_at <= {UNTIL} "
    f"AND {_KEY} > {_LO} AND {_KEY} <= {_HI}"
)
"""Pending rows due by ``until`` whose key is in ``(lo, hi]``."""

PAGE_END_SQL = (
    "SELECT count(), max(key) FROM ("
    f"  SELECT {_KEY} AS key FROM {{table}} WHERE {_IN_PAGE} ORDER BY key LIMIT {{scan:UInt32}})"
)
"""How many (at most ``scan``) and the last key of the first ``scan`` pending rows after
``lo``: every current version in ``(lo, that key]`` is among them."""

CURRENT_IN_PAGE_SQL = (
    f"SELECT schedule_id, max({NEWEST}) AS newest, "
    "argMax((CAST(status, 'String'), toUnixTimestamp64Micro(scheduled_at), priority, "
    f"toUnixTimestamp64Micro(updated_at)), {NEWEST}) AS cur "
    f"FROM {{table}} WHERE listed_at <= {UNTIL} "
    f"AND schedule_id IN (SELECT schedule_id FROM {{table}} WHERE {_IN_PAGE}) "
    "GROUP BY schedule_id"
)
"""The current version of every event with a pending row due in the page (any status): its
rank and ``(status, scheduled_at µs, priority, updated_at µs)``."""

_CUR_KEY = "(cur.2, -toInt64(cur.3), schedule_id)"
DUE_SQL = (
    f"SELECT {SELECT_COLUMNS} FROM {{table}} "
    f"WHERE listed_at <= {UNTIL} AND (schedule_id, version, {BLOCK}) IN ("
    "  SELECT schedule_id, newest.1, newest.2 FROM ("
    f"    {CURRENT_IN_PAGE_SQL} HAVING cur.1 = 'pending' AND cur.2 <= {{until:Int64}} "
    f"      AND {_CUR_KEY} > {_LO} AND {_CUR_KEY} <= {_HI} "
    "    ORDER BY cur.2, cur.3 DESC, schedule_id LIMIT {limit:UInt32})) "
    "ORDER BY scheduled_at, priority DESC, schedule_id"
)
"""Pending events due by ``until`` (current versions only) whose key is in ``(lo, hi]``,
earliest first, at most ``limit``."""


def page_key(event: ScheduledEvent) -> PageKey:
    """``event``'s place in the sync's order."""
    return (event.due_us, -event.priority, event.schedule_id)


def bounds(lo: PageKey, hi: PageKey) -> dict[str, Any]:
    """The parameters of a page ``(lo, hi]``."""
    return {
        "lo_us": lo[0],
        "lo_rank": lo[1],
        "lo_id": lo[2],
        "hi_us": hi[0],
        "hi_rank": hi[1],
        "hi_id": hi[2],
    }

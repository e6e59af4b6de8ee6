"""Binary bodies in the ClickHouse tier (real chDB): every read path (rows by id, the sync's
Arrow pages) and every write path (insert, new versions, the sync's ``queued`` rows) keeps
the exact bytes — clickhouse-connect writes a String that is not UTF-8 as hex unless asked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from delayline.adapters.clickhouse.long_term_store import ClickHouseLongTermStore
from delayline.domain.events import EventStatus, ScheduledEvent, new_event

NOW = datetime.now(UTC).replace(microsecond=0)
BODIES = {
    "nul-ff-fe": b"\x00\x02\xff\xfe" * 50,
    "bad-sequences": b"\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x28\x8c\xbc\xed\xa0\x80\xc0\xaf",
    "every-byte": bytes(range(256)),
    "text": "héllo wörld\n".encode(),
    "empty": b"",
}


def _event(sid: str, body: bytes, days: float) -> ScheduledEvent:
    return new_event(topic="t", body=body, scheduled_at=NOW + timedelta(days=days), schedule_id=sid)


async def test_bodies_keep_their_bytes_on_every_path(lt_store: ClickHouseLongTermStore) -> None:
    events = [_event(sid, body, 2 + i / 100) for i, (sid, body) in enumerate(BODIES.items())]
    assert await lt_store.insert(events) == [True] * len(events)
    for sid, body in BODIES.items():  # rows by id
        got = await lt_store.get(sid)
        assert got is not None and got.body == body, sid
    # A new version is written from the row read by id.
    assert await lt_store.reschedule("nul-ff-fe", NOW + timedelta(days=1))
    assert await lt_store.mark_status(["bad-sequences"], EventStatus.PENDING, "kept") == 1
    page = await lt_store.due_before(NOW + timedelta(days=3), 100)  # the sync's Arrow read
    assert {e.schedule_id: e.body for e in page.events} == BODIES
    assert await lt_store.mark_queued(page) == []  # the sync's column-wise write
    for sid, body in BODIES.items():
        got = await lt_store.get(sid)
        assert got is not None and (got.status, got.body) == (EventStatus.QUEUED, body), sid

"""The caller's view of the one stored id space (rule: ``domain.tenancy``).

A tenant's caller names its events by its own ids and correlation ids; :class:`TenantView`
turns them into stored ones on the way in and back on the way out. An admin sees the stored
space as it is: every tenant's events, another tenant's under ``@<tenant>/<id>``.
"""

from __future__ import annotations

from typing import Any

from delayline.api.keys import Principal
from delayline.api.schemas import ApiError
from delayline.domain import tenancy
from delayline.domain.events import ScheduledEvent
from delayline.domain.limits import MAX_TEXT

MAX_SCHEDULE_ID = 200


class TenantView:
    """Ids as ``principal`` names them ↔ ids as stored."""

    def __init__(self, principal: Principal) -> None:
        self.tenant = principal.tenant
        self.everything = principal.is_admin

    def stored(self, given: str) -> str | None:
        """The stored form of a given id or correlation id; None when it names nothing this
        caller may see (the default tenant giving an ``@…`` id): answer as for an unknown id."""
        if self.everything:
            return given
        try:
            return tenancy.qualify(self.tenant, given)
        except tenancy.TenancyError:
            return None

    def new(self, given: str, field: str, limit: int) -> str:
        """The stored form of an id or correlation id to create; 422 naming ``field`` when it
        is reserved or too long once qualified."""
        stored = self.stored(given)
        if stored is None:
            raise ApiError(
                422,
                f"{field}: may not start with {tenancy.RESERVED_PREFIX!r} "
                "(reserved for other tenants' ids)",
                field=field,
            )
        if len(stored) > limit:
            room = limit - (len(stored) - len(given))
            raise ApiError(
                422,
                f"{field}: at most {room} characters for tenant {self.tenant!r}",
                field=field,
            )
        return stored

    def new_id(self, given: str, field: str = "schedule_id") -> str:
        """:meth:`new` for a schedule id."""
        return self.new(given, field, MAX_SCHEDULE_ID)

    def new_key(self, given: str, field: str = "correlation_id") -> str:
        """:meth:`new` for a correlation id."""
        return self.new(given, field, MAX_TEXT)

    def sees(self, stored: str) -> bool:
        """Whether the stored id is one of this caller's."""
        return self.everything or tenancy.owns(self.tenant, stored)

    def shown(self, stored: str) -> str:
        """A stored id or correlation id as this caller names it."""
        if self.everything or not stored:
            return stored
        return tenancy.unqualify(self.tenant, stored)

    def shown_event(self, event: ScheduledEvent) -> dict[str, Any]:
        """``event.to_dict()`` with its ids as this caller names them."""
        doc = event.to_dict()
        doc["schedule_id"] = self.shown(event.schedule_id)
        if event.correlation_id and self.sees(event.correlation_id):
            doc["correlation_id"] = self.shown(event.correlation_id)
        return doc

    def search_start(self, cursor: str) -> str:
        """Where a search in id order starts for this caller after its ``cursor``."""
        if self.everything:
            return cursor
        stored = tenancy.prefix(self.tenant) + cursor if cursor else ""
        return tenancy.first_id_after(self.tenant, stored)

    def skip_past(self, stored: str) -> str | None:
        """After a foreign id in a search: the cursor past its range, None if no more of
        this caller's ids can follow."""
        return tenancy.skip_past(self.tenant, stored)

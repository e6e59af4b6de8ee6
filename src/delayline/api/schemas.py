"""Request and response bodies of the HTTP API (they are also its OpenAPI documentation).

Request models forbid unknown fields and check types and ranges; the meaning of an event (topic
name rules, reserved headers, body size…) is checked by ``SchedulerApi.build_event``, the one
place every ingress shares.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from delayline.domain.events import BodyEncoding, decode_base64
from delayline.domain.limits import (
    EARLIEST_YEAR,
    LATEST_YEAR,
    MAX_DELAY_SECONDS,
    MAX_TEXT,
    SCHEDULE_ID_PATTERN,
    TOPIC_PATTERN,
)

MAX_BATCH_EVENTS = 10_000
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
UINT32_MAX = 2**32 - 1


def to_utc(value: datetime) -> datetime:
    """``value`` as aware UTC (naive means UTC); ``ValueError`` when it cannot be represented."""
    try:
        out = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError("date-time is out of range") from None
    if not EARLIEST_YEAR <= out.year <= LATEST_YEAR:
        raise ValueError(f"{out.isoformat()} is outside the years {EARLIEST_YEAR}-{LATEST_YEAR}")
    return out


def _json_body(value: Any) -> Any:
    # One clear message instead of one error per member of the union.
    if not isinstance(value, str | dict | list):
        raise ValueError("must be a string, a JSON object or a JSON array")
    return value


# pydantic refuses lone surrogates ("\ud800") in str fields: no store could encode them.
Text = Annotated[str, Field(max_length=MAX_TEXT)]
Timestamp = Annotated[datetime, AfterValidator(to_utc)]
# Documented without "null": a due time is either given or left out (validation still accepts
# null, which reads as "not given").
OptionalTimestamp = Annotated[
    Timestamp | None, WithJsonSchema({"type": "string", "format": "date-time"})
]
# Numbers are strict: ``true`` is not 1 nor ``false`` 0 (which would mean "no limit"), and
# ``"5"`` is not a number.
OptionalDelay = Annotated[
    float | None,
    Field(ge=0, le=MAX_DELAY_SECONDS, strict=True),
    WithJsonSchema({"type": "number", "minimum": 0, "maximum": MAX_DELAY_SECONDS}),
]
# bytes only after validation: a base64 body is decoded into the bytes it stands for.
JsonBody = Annotated[
    str | bytes | dict[str, Any] | list[Any],
    BeforeValidator(_json_body),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "object"}, {"type": "array"}]}),
]


# The OpenAPI schema says what the validators check: exactly one of the two due times.
_ONE_DUE_TIME: dict[str, Any] = {
    "oneOf": [{"required": ["scheduled_at"]}, {"required": ["delay_seconds"]}]
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class EventIn(_Strict):
    """One event to schedule: give ``scheduled_at`` or ``delay_seconds`` (not both)."""

    topic: Annotated[str, Field(pattern=TOPIC_PATTERN, description="Kafka topic to publish to")]
    entity_type: Text = ""
    action: Text = ""
    body_encoding: BodyEncoding = Field(
        "utf-8",
        exclude=True,  # consumed by the body's validator
        description='"base64": body is a string of standard base64 holding the bytes to send '
        '(any bytes, e.g. Avro or Protobuf); "utf-8": as described for body',
    )
    body: Annotated[
        JsonBody,
        Field(
            description="Message value: a string as its UTF-8 bytes, an object/array as JSON; "
            'with body_encoding "base64", a base64 string of the exact bytes'
        ),
    ] = ""
    model_config = ConfigDict(json_schema_extra=_ONE_DUE_TIME)

    scheduled_at: OptionalTimestamp = Field(
        None, description="Due time, ISO-8601 (no offset means UTC); past times fire at once"
    )
    delay_seconds: OptionalDelay = Field(None, description="Due in this many seconds from now")
    correlation_id: Text | None = None
    headers: dict[str, Text] | None = None
    priority: int = Field(
        0, ge=INT32_MIN, le=INT32_MAX, strict=True, description="Higher fires first"
    )
    max_delay_seconds: int | None = Field(
        None,
        ge=0,
        strict=True,
        le=UINT32_MAX,
        description="Skip (do not publish) if it could only fire later than this past due",
    )
    schedule_id: str | None = Field(
        None,
        pattern=SCHEDULE_ID_PATTERN,
        description="Caller-chosen id: scheduling the same id twice creates one event",
    )

    @field_validator("body")
    @classmethod
    def _decode_body(cls, body: Any, info: ValidationInfo) -> Any:
        if info.data.get("body_encoding") != "base64":
            return body
        if not isinstance(body, str):
            raise ValueError('must be a base64 string with body_encoding "base64"')
        return decode_base64(body)

    @model_validator(mode="after")
    def _one_due_time(self) -> EventIn:
        if self.scheduled_at is None and self.delay_seconds is None:
            raise ValueError("give scheduled_at or delay_seconds")
        if self.scheduled_at is not None and self.delay_seconds is not None:
            raise ValueError("give scheduled_at or delay_seconds, not both")
        return self


class BatchIn(_Strict):
    """Several events, scheduled in one request."""

    events: list[EventIn] = Field(min_length=1, max_length=MAX_BATCH_EVENTS)


def _kind(value: Any) -> str:
    # An object with "events" is a batch; anything else is validated as one event.
    return "batch" if isinstance(value, dict) and "events" in value else "event"


ScheduleRequest = Annotated[
    Annotated[EventIn, Tag("event")] | Annotated[BatchIn, Tag("batch")],
    Discriminator(_kind),
]


class ScheduleResult(BaseModel):
    """The outcome of scheduling one event."""

    schedule_id: str
    created: bool = Field(
        description="True: stored now. False: an event with this id already exists (pending, "
        "firing, or remembered after its outcome) and nothing was changed; a retried POST "
        "never fires twice. To change or schedule the id again, PUT the full event."
    )
    scheduled_at: datetime


class BatchResult(BaseModel):
    """The outcome of scheduling a batch, in request order."""

    results: list[ScheduleResult]
    created: int = Field(description="How many events were new")


class RescheduleIn(_Strict):
    """A new due time for a pending event: ``scheduled_at`` or ``delay_seconds``."""

    model_config = ConfigDict(json_schema_extra=_ONE_DUE_TIME)

    scheduled_at: OptionalTimestamp = None
    delay_seconds: OptionalDelay = None

    @model_validator(mode="after")
    def _one_due_time(self) -> RescheduleIn:
        if (self.scheduled_at is None) == (self.delay_seconds is None):
            raise ValueError("give exactly one of scheduled_at or delay_seconds")
        return self


def _put_kind(value: Any) -> str:
    # A body with a topic is a full event (replace); else a new due time (reschedule).
    return "event" if isinstance(value, dict) and "topic" in value else "reschedule"


PutRequest = Annotated[
    Annotated[EventIn, Tag("event")] | Annotated[RescheduleIn, Tag("reschedule")],
    Discriminator(_put_kind),
]


class Replaced(BaseModel):
    """The outcome of a PUT with a full event: it is now the id's current version."""

    schedule_id: str
    scheduled_at: datetime
    outcome: Literal["created", "replaced", "scheduled_again", "after_firing", "unchanged"] = Field(
        description="created: the id was unknown. replaced: the pending version (in either "
        "tier) was replaced. scheduled_again: the id was cancelled or had fired. "
        "after_firing: the id is being fired right now; that firing is published and this "
        "version is scheduled when it ends. unchanged: this exact version (same fields and "
        "due time) is already the current or the remembered one, so a retried PUT with "
        "scheduled_at never fires twice."
    )


class EventOut(BaseModel):
    """A scheduled event and its status."""

    schedule_id: str
    topic: str
    entity_type: str
    action: str
    body: str = Field(description="The message value: see body_encoding")
    body_encoding: BodyEncoding = Field(
        description='"utf-8": the value is the UTF-8 of body (any value that is valid UTF-8); '
        '"base64": the value is not UTF-8, body is its standard base64'
    )
    correlation_id: str
    headers: dict[str, str]
    scheduled_at: datetime
    max_delay_seconds: int
    priority: int
    status: str
    created_at: datetime
    updated_at: datetime
    attempts: int
    last_error: str | None
    fired_at: datetime | None = Field(None, description="When the broker acknowledged it")
    lateness_seconds: float | None = Field(None, description="fired_at minus scheduled_at")
    kafka_partition: int | None = None
    kafka_offset: int | None = None


class EventPage(BaseModel):
    """One page of a search; pass ``next_cursor`` as ``cursor`` for the next (null: last)."""

    events: list[EventOut]
    next_cursor: str | None


class TransitionOut(BaseModel):
    """One step of an event's life."""

    transition: str
    at: datetime
    node: str
    detail: str
    kafka_partition: int | None = None
    kafka_offset: int | None = None


class HistoryOut(BaseModel):
    """Every recorded transition of an event, oldest first."""

    schedule_id: str
    transitions: list[TransitionOut]


class ByKeyResult(BaseModel):
    """How many events a cancel or reschedule by key changed, per tier."""

    correlation_id: str
    redis: int
    clickhouse: int
    total: int


class Cancelled(BaseModel):
    """A cancelled event."""

    schedule_id: str
    cancelled: Literal[True] = True


class Rescheduled(BaseModel):
    """A rescheduled event."""

    schedule_id: str
    scheduled_at: datetime


class Moved(BaseModel):
    """Result of a manual sync."""

    moved: int


class Removed(BaseModel):
    """Result of a manual cleanup."""

    removed: int


class ErrorDetail(BaseModel):
    """One problem of a request."""

    field: str | None
    message: str


class ErrorOut(BaseModel):
    """Every 4xx/5xx body: what is wrong, and where when it is one field."""

    error: str
    field: str | None = None
    details: list[ErrorDetail] | None = None


class ApiError(Exception):
    """An error answered as :class:`ErrorOut` with ``status_code`` (raised by the routes)."""

    def __init__(
        self,
        status_code: int,
        error: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(error)
        self.status_code = status_code
        self.error = error
        self.field = field
        self.headers = headers

"""Why an event is refused: the errors every event validation raises. Pure: no I/O."""

from __future__ import annotations


class InvalidEventError(ValueError):
    """The event cannot be scheduled; the message says which field and why."""

    code = "invalid_event"
    """The dead-letter reason code of a Kafka message refused for this."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}")
        self.field = field_name
        self.problem = problem


class OversizeEventError(InvalidEventError):
    """The event would be a Kafka message larger than the producer can send."""

    code = "oversize"

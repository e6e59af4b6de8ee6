"""Delayline: a hybrid delayed-event scheduler that fires to Kafka on time."""

__version__ = "0.1.0"

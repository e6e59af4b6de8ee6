"""Consumer lag from librdkafka's statistics JSON."""

from __future__ import annotations

import orjson

from delayline.adapters.kafka_consumer import KafkaDelayedSource


def _source() -> KafkaDelayedSource:
    return KafkaDelayedSource(
        bootstrap_servers="127.0.0.1:1", topic="delayed", group_id="g", dead_letter_topic="dlq"
    )


def test_lag_sums_known_partition_lags() -> None:
    source = _source()
    assert source.lag is None
    stats = {
        "topics": {
            "delayed": {
                "partitions": {
                    "0": {"consumer_lag": 5},
                    "1": {"consumer_lag": 7},
                    "2": {"consumer_lag": -1},  # not assigned / unknown
                    "-1": {"consumer_lag": 99},  # librdkafka's internal partition
                }
            },
            "other": {"partitions": {"0": {"consumer_lag": 1000}}},
        }
    }
    source._on_stats(orjson.dumps(stats).decode())
    assert source.lag == 12


def test_garbage_statistics_leave_lag_alone() -> None:
    source = _source()
    source._on_stats("not json")
    source._on_stats('{"topics": {}}')
    assert source.lag is None

"""Dead letters always fit: key, value and headers share the budget, the original sizes noted."""

from __future__ import annotations

import pytest

from delayline.adapters import dead_letters
from delayline.adapters.kafka_consumer import KafkaMessage

LIMIT = 1_000_000  # librdkafka's default message.max.bytes


def _msg(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]]
) -> KafkaMessage:
    return KafkaMessage("delayed", 2, 41, key, value, tuple(headers), 1)


def _sizes(letter: dead_letters.DeadLetter) -> dict[str, str]:
    raw = dict(letter.headers)[dead_letters.H_DLQ_ORIGINAL_SIZES]
    assert raw is not None
    return dict(part.split("=") for part in raw.decode().split(";"))


def test_a_small_message_is_kept_whole_with_its_notes() -> None:
    msg = _msg(b"k", b"v", [("a", b"1"), ("b", None)])
    letter = dead_letters.build(msg, "missing_header: x-topic", LIMIT)
    assert (letter.key, letter.value) == (b"k", b"v")
    headers = dict(letter.headers)
    assert headers["a"] == b"1"
    assert headers["x-dlq-reason"] == b"missing_header: x-topic"
    assert (headers["x-dlq-source-partition"], headers["x-dlq-source-offset"]) == (b"2", b"41")
    assert dead_letters.H_DLQ_ORIGINAL_SIZES not in headers


def test_key_and_value_that_fill_the_limit_are_cut_to_fit() -> None:
    msg = _msg(b"k" * 99_900, b"v" * 900_000, [("origin", b"o")])
    letter = dead_letters.build(msg, "missing_header: x-topic", LIMIT)
    assert letter.size <= LIMIT - dead_letters.RECORD_OVERHEAD_BYTES
    assert letter.key == b"k" * 99_900  # the smaller part is kept whole
    assert letter.value is not None and 0 < len(letter.value) < 900_000
    assert dict(letter.headers)["origin"] == b"o"
    sizes = _sizes(letter)
    assert (sizes["key"], sizes["value"], sizes["headers_kept"]) == ("99900", "900000", "1/1")


@pytest.mark.parametrize(
    ("key", "value", "headers"),
    [
        (b"k" * 2_000_000, b"v", []),
        (b"k" * 600_000, b"v" * 600_000, []),
        (None, b"v" * 3_000_000, [(f"h{i}", b"x" * 50_000) for i in range(40)]),
        (b"k", None, [("big", b"x" * 1_500_000), ("small", b"s")]),
    ],
)
def test_any_mix_of_big_parts_fits(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]]
) -> None:
    letter = dead_letters.build(_msg(key, value, headers), "oversize: x" * 1000, 100_000)
    assert letter.size <= 100_000 - dead_letters.RECORD_OVERHEAD_BYTES
    sizes = _sizes(letter)
    assert int(sizes["key"]) == len(key or b"")
    assert int(sizes["value"]) == len(value or b"")


def test_fair_shares_keep_small_parts_whole() -> None:
    assert dead_letters.fair_shares({"key": 10, "value": 500, "headers": 400}, 600) == {
        "key": 10,
        "headers": 295,
        "value": 295,
    }
    assert dead_letters.fair_shares({"a": 5}, -3) == {"a": 0}


def test_unreadable_headers_are_noted() -> None:
    msg = KafkaMessage("delayed", 0, 1, b"k", b"v", (), 1, header_error="a header key is not UTF-8")
    letter = dead_letters.build(msg, "invalid_header: a header key is not UTF-8", LIMIT)
    note = dict(letter.headers)[dead_letters.H_DLQ_UNREADABLE_HEADERS]
    assert note is not None and note.startswith(b"a header key is not UTF-8")
    assert (letter.key, letter.value) == (b"k", b"v")


def test_minimal_keeps_only_the_notes() -> None:
    letter = dead_letters.minimal(_msg(b"k" * 10, b"v" * 20, [("a", b"1")]), "oversize: x")
    assert (letter.key, letter.value) == (None, b"")
    assert {name for name, _ in letter.headers} == {
        "x-dlq-reason", "x-dlq-source-topic", "x-dlq-source-partition", "x-dlq-source-offset",
        dead_letters.H_DLQ_ORIGINAL_SIZES,
    }  # fmt: skip
    assert _sizes(letter)["value"] == "20"

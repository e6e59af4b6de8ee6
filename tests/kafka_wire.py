"""A raw Kafka Produce request built by hand, to send what clients refuse to (e.g. a header key
that is not UTF-8): RecordBatch v2 with its CRC-32C, in one Produce v3 request over a socket."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Sequence

Record = tuple[bytes | None, bytes | None, Sequence[tuple[bytes, bytes | None]]]
"""``(key, value, headers)``; header keys are raw bytes."""


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of a RecordBatch v2."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _varint(value: int) -> bytes:
    zigzag = (value << 1) ^ (value >> 63)
    out = bytearray()
    while True:
        byte = zigzag & 0x7F
        zigzag >>= 7
        if zigzag:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _sized(data: bytes | None) -> bytes:
    return _varint(-1) if data is None else _varint(len(data)) + data


def _record(offset_delta: int, record: Record) -> bytes:
    key, value, headers = record
    body = b"\x00" + _varint(0) + _varint(offset_delta) + _sized(key) + _sized(value)
    body += _varint(len(headers))
    for name, header_value in headers:
        body += _sized(name) + _sized(header_value)
    return _varint(len(body)) + body


def record_batch(records: Sequence[Record], timestamp_ms: int) -> bytes:
    """One uncompressed RecordBatch v2 (magic 2) holding ``records``."""
    after_crc = struct.pack(
        ">hiqqqhii", 0, len(records) - 1, timestamp_ms, timestamp_ms, -1, -1, -1, len(records)
    )
    after_crc += b"".join(_record(i, r) for i, r in enumerate(records))
    after_length = struct.pack(">ibI", -1, 2, crc32c(after_crc)) + after_crc
    return struct.pack(">qi", 0, len(after_length)) + after_length


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


def produce(bootstrap: str, topic: str, partition: int, records: Sequence[Record]) -> int:
    """Produce ``records`` in one request (acks=all); returns the base offset, raises on an
    error code."""
    batch = record_batch(records, int(time.time() * 1000))
    body = struct.pack(">hhi", 0, 3, 1) + _string("delayline-tests")  # Produce v3 header
    body += struct.pack(">hhi", -1, -1, 10_000)  # no transactional id, acks=all, timeout
    body += struct.pack(">i", 1) + _string(topic) + struct.pack(">ii", 1, partition)
    body += struct.pack(">i", len(batch)) + batch
    host, port = bootstrap.split(",")[0].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        answer = _read_exactly(sock, struct.unpack(">i", _read_exactly(sock, 4))[0])
    # correlation id, [topic name, [partition, error code, base offset, ...]]
    pos = 4 + 4
    (name_length,) = struct.unpack_from(">h", answer, pos)
    pos += 2 + name_length + 4
    _, error_code, base_offset = struct.unpack_from(">ihq", answer, pos)
    if error_code:
        raise RuntimeError(f"produce to {topic}/{partition} failed with error code {error_code}")
    return int(base_offset)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        data += chunk
    return bytes(data)

"""An event's body: what may be one, its bytes, and how JSON shows them. Pure: no I/O."""

from __future__ import annotations

import base64
import binascii
from typing import Literal

import orjson

from delayline.domain.event_errors import InvalidEventError

BodyEncoding = Literal["utf-8", "base64"]
"""How JSON text stands for a body's bytes: its UTF-8 encoding, or standard base64."""


def encode_body(body: object, max_bytes: int) -> bytes:
    """The body as bytes: ``bytes`` as they are, a ``str`` as its UTF-8, a dict or list as
    JSON."""
    if isinstance(body, bytes | bytearray | memoryview):
        data = bytes(body)
    elif isinstance(body, str):
        try:
            data = body.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates
            raise InvalidEventError(
                "body", "contains characters that are not valid UTF-8"
            ) from None
    elif isinstance(body, dict | list):
        try:
            data = orjson.dumps(body)
        except TypeError as exc:
            raise InvalidEventError("body", f"cannot be encoded as JSON: {exc}") from None
    else:
        raise InvalidEventError(
            "body", f"must be str, bytes, dict or list, not {type(body).__name__}"
        )
    if len(data) > max_bytes:
        raise InvalidEventError("body", f"is {len(data)} bytes; the limit is {max_bytes}")
    return data


def decode_base64(text: str) -> bytes:
    """The bytes of standard (RFC 4648, padded) base64 ``text`` — how a JSON document carries
    a binary body; ``ValueError`` for anything else."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64 (RFC 4648 alphabet, with padding)") from None


def body_view(body: bytes) -> tuple[str, BodyEncoding]:
    """``(text, encoding)`` to show ``body`` in JSON: UTF-8 text as itself (``"utf-8"``),
    any other bytes in base64 (``"base64"``)."""
    try:
        return body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), "base64"

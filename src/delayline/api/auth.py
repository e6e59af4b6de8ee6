"""API-key authentication: ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``.

The presented key is compared in constant time with every configured key (no early exit, so the
timing says nothing about which key nearly matched). Keys are never logged nor echoed.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Annotated

from fastapi import Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from delayline.metrics import Metrics

API_KEY_HEADER = "X-API-Key"
WWW_AUTHENTICATE = 'Bearer realm="delayline"'

# auto_error=False: a missing or malformed header reaches __call__, which answers one clear 401.
_api_key_header = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="One of the configured API keys"
)
_bearer = HTTPBearer(auto_error=False, description="One of the configured API keys")


class AuthenticationError(Exception):
    """The request has no valid API key (answered 401 with ``WWW-Authenticate``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ApiKeyAuth:
    """A FastAPI dependency that admits requests carrying one of ``keys``."""

    def __init__(self, keys: Sequence[str], metrics: Metrics) -> None:
        self._keys = [key.encode("utf-8") for key in keys if key]
        self._metrics = metrics

    @property
    def enabled(self) -> bool:
        """True when at least one key is configured (otherwise the API is open)."""
        return bool(self._keys)

    def is_valid(self, candidate: str) -> bool:
        """Whether ``candidate`` equals one of the keys, compared in constant time."""
        raw = candidate.encode("utf-8", "surrogateescape")
        matched = False
        for key in self._keys:
            # Compare with every key, without short-circuit.
            matched |= hmac.compare_digest(raw, key)
        return matched

    async def __call__(
        self,
        api_key: Annotated[str | None, Security(_api_key_header)],
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    ) -> None:
        """Raise :class:`AuthenticationError` unless a valid key was presented."""
        if not self.enabled:
            return
        candidates = [c for c in (api_key, bearer.credentials if bearer else None) if c]
        if not candidates:
            self._metrics.auth_failed()
            raise AuthenticationError(
                f"authentication required: send an API key in {API_KEY_HEADER} "
                "or as Authorization: Bearer"
            )
        if not any([self.is_valid(c) for c in candidates]):  # evaluate every candidate
            self._metrics.auth_failed()
            raise AuthenticationError("invalid API key")

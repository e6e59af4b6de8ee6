"""API-key authentication: ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``.

:class:`AuthMiddleware` checks the key from the request head, before anything reads the body, so
an unauthenticated request costs no more than its headers. The presented key is compared in
constant time with every configured key (no early exit, so the timing says nothing about which
key nearly matched). Keys are never logged nor echoed.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Annotated

from fastapi import Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

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

    def check(self, api_key: str | None, bearer: str | None) -> None:
        """Raise :class:`AuthenticationError` unless ``api_key`` or ``bearer`` is a valid key."""
        if not self.enabled:
            return
        candidates = [c for c in (api_key, bearer) if c]
        if not candidates:
            self._metrics.auth_failed()
            raise AuthenticationError(
                f"authentication required: send an API key in {API_KEY_HEADER} "
                "or as Authorization: Bearer"
            )
        if not any([self.is_valid(c) for c in candidates]):  # evaluate every candidate
            self._metrics.auth_failed()
            raise AuthenticationError("invalid API key")

    async def __call__(
        self,
        api_key: Annotated[str | None, Security(_api_key_header)],
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    ) -> None:
        """The route dependency: documents the schemes in OpenAPI and checks the key again."""
        self.check(api_key, bearer.credentials if bearer else None)


def _bearer_token(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


Refusal = Callable[[Send, AuthenticationError], Awaitable[None]]


class AuthMiddleware:
    """Refuse a request without a valid key from its head alone: its body is never read.

    ``open_paths`` (documentation, and health and metrics when open) pass without a key.
    ``refuse`` sends the 401.
    """

    def __init__(
        self, app: ASGIApp, auth: ApiKeyAuth, open_paths: Collection[str], refuse: Refusal
    ) -> None:
        self.app = app
        self.auth = auth
        self.open_paths = frozenset(open_paths)
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.auth.enabled or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        api_key: str | None = None
        authorization: str | None = None
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                api_key = value.decode("latin-1")
            elif name == b"authorization":
                authorization = value.decode("latin-1")
        try:
            self.auth.check(api_key, _bearer_token(authorization))
        except AuthenticationError as exc:
            await self.refuse(send, exc)
            return
        await self.app(scope, receive, send)

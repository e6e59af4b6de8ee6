"""API-key authentication and scopes: ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``.

:class:`AuthMiddleware` finds the caller from the request head, before anything reads the body,
so an unauthenticated request costs no more than its headers: no key is 401, a key that is not
configured 401. It leaves the caller (:class:`Principal`) in the request's state; each route
then asks for the scope it needs through :func:`requires` (403 when the key lacks it). The
presented key's SHA-256 is compared in constant time with every configured hash (no early
exit, so the timing says nothing about which key nearly matched). Keys are never logged nor
echoed. With no key configured every request is the default tenant's admin.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from delayline.api.keys import ANONYMOUS_ADMIN, ApiKeyEntry, Principal, hash_key
from delayline.api.keys import Scope as KeyScope
from delayline.metrics import Metrics

API_KEY_HEADER = "X-API-Key"
WWW_AUTHENTICATE = 'Bearer realm="delayline"'
PRINCIPAL = "principal"
"""The key of the caller in the ASGI scope's ``state``."""

# auto_error=False: a missing or malformed header is the middleware's business (one clear 401).
_api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="An API key")
_bearer = HTTPBearer(auto_error=False, description="An API key")


class AuthenticationError(Exception):
    """The request has no valid API key (answered 401 with ``WWW-Authenticate``)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


class ForbiddenError(Exception):
    """The key is valid but lacks the scope the route needs (answered 403)."""

    def __init__(self, scope: KeyScope) -> None:
        super().__init__(f"this API key lacks the {scope.value!r} scope")
        self.message = str(self)


class ApiKeyAuth:
    """Tells the caller from a presented key, against the configured keys' hashes."""

    def __init__(self, keys: Sequence[ApiKeyEntry], metrics: Metrics) -> None:
        self._keys = [(entry, bytes.fromhex(entry.sha256)) for entry in keys]
        self._metrics = metrics

    @property
    def enabled(self) -> bool:
        """True when at least one key is configured (otherwise every caller is admin)."""
        return bool(self._keys)

    def find(self, candidate: str) -> ApiKeyEntry | None:
        """The key whose hash is ``candidate``'s, compared in constant time with every one."""
        digest = bytes.fromhex(hash_key(candidate))
        found: ApiKeyEntry | None = None
        for entry, expected in self._keys:
            if hmac.compare_digest(digest, expected):  # no early exit: compare with every key
                found = entry
        return found

    def authenticate(self, api_key: str | None, bearer: str | None) -> Principal:
        """The caller presenting ``api_key`` or ``bearer``; :class:`AuthenticationError` (and
        a failure counted) when neither is a configured key."""
        if not self.enabled:
            return ANONYMOUS_ADMIN
        candidates = [c for c in (api_key, bearer) if c]
        if not candidates:
            self._metrics.auth_failed("missing")
            raise AuthenticationError(
                f"authentication required: send an API key in {API_KEY_HEADER} "
                "or as Authorization: Bearer",
                "missing",
            )
        found = [self.find(c) for c in candidates]  # look every candidate up
        entry = next((e for e in found if e is not None), None)
        if entry is None:
            self._metrics.auth_failed("invalid")
            raise AuthenticationError("invalid API key", "invalid")
        return Principal(key_id=entry.id, tenant=entry.tenant, scopes=entry.scopes)

    def forbid(self, scope: KeyScope) -> ForbiddenError:
        """The 403 for a caller lacking ``scope`` (counted)."""
        self._metrics.auth_failed("forbidden")
        return ForbiddenError(scope)


def requires(auth: ApiKeyAuth, scope: KeyScope) -> Callable[..., Awaitable[Principal]]:
    """A route dependency: the caller, if it holds ``scope`` (else 403), also left in the
    request's state for :func:`caller_of`. With keys configured its parameters document the
    two schemes in OpenAPI; the key itself was checked by the middleware."""

    def admit(request: Request, principal: Principal) -> Principal:
        if not principal.can(scope):
            raise auth.forbid(scope)
        setattr(request.state, PRINCIPAL, principal)
        return principal

    async def anyone(request: Request) -> Principal:
        return admit(request, ANONYMOUS_ADMIN)

    async def caller(
        request: Request,
        _api_key: Annotated[str | None, Security(_api_key_header)],
        _bearer_token: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    ) -> Principal:
        checked = getattr(request.state, PRINCIPAL, None)
        if isinstance(checked, Principal):
            return admit(request, checked)
        # an open path (health, metrics): no key was checked yet
        token = _bearer_token.credentials if _bearer_token else None
        return admit(request, auth.authenticate(_api_key, token))

    return caller if auth.enabled else anyone


def caller_of(request: Request) -> Principal:
    """The caller of a request whose route checked a scope with :func:`requires`."""
    principal = getattr(request.state, PRINCIPAL, None)
    if not isinstance(principal, Principal):
        raise RuntimeError("the route has no `requires` dependency")
    return principal


def _bearer_value(authorization: str | None) -> str | None:
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
    ``refuse`` sends the 401. Every other request carries its caller in ``state``.
    """

    def __init__(
        self, app: ASGIApp, auth: ApiKeyAuth, open_paths: Collection[str], refuse: Refusal
    ) -> None:
        self.app = app
        self.auth = auth
        self.open_paths = frozenset(open_paths)
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
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
            principal = self.auth.authenticate(api_key, _bearer_value(authorization))
        except AuthenticationError as exc:
            await self.refuse(send, exc)
            return
        scope.setdefault("state", {})[PRINCIPAL] = principal
        await self.app(scope, receive, send)

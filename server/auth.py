"""API keys on requests: which header carries them, who they belong to, what they may do.

Either ``X-API-Key: <key>`` or ``Authorization: Bearer <key>`` is accepted on every
authenticated route. A key holds one or more scopes; ``operator`` implies the others.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from gpufleet.server.http.types import HttpError, Request
from gpufleet.server.schemas import KeyInfo

if TYPE_CHECKING:
    from gpufleet.server.store import MetricsStore

log = logging.getLogger("gpufleet.auth")

OPERATOR = "operator"
INGEST = "ingest"
READ = "read"
ANY_KEY = "any"  # any valid key, whatever its scopes (key rotation)

_FORBIDDEN_TEXT = {
    OPERATOR: "This endpoint requires an operator-scoped key",
    INGEST: "This endpoint requires a key with the ingest (or operator) scope",
    READ: "This endpoint requires a key with the read (or operator) scope",
}
UNAUTHORIZED_TEXT = "Missing or invalid API key"
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="gpufleet"'}


def presented_secret(request: Request) -> str | None:
    """The key a request carries in ``X-API-Key`` or ``Authorization: Bearer``, if any."""
    key = request.headers.get("x-api-key")
    if key:
        return key.strip() or None
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def unauthorized() -> HttpError:
    return HttpError(401, UNAUTHORIZED_TEXT, _CHALLENGE)


def allows(scopes: Iterable[str], required: str) -> bool:
    """Whether a key with ``scopes`` may call a route that requires ``required``."""
    scopes = frozenset(scopes)
    return required == ANY_KEY or required in scopes or OPERATOR in scopes


def forbidden(required: str) -> HttpError:
    return HttpError(403, _FORBIDDEN_TEXT.get(required, f"This endpoint requires the {required} scope"))


class KeyResolver(Protocol):
    """Turns a presented secret into the key it is, or None."""

    async def resolve(self, secret: str) -> KeyInfo | None: ...

    def recognizes(self, secret: str) -> bool:
        """Whether ``secret`` may be looked up even while its address is refused for bad keys.

        True for a secret that proved valid here before (a valid key is never slowed by
        others' failures) and for resolvers whose lookup costs nothing.
        """
        ...

    def forget(self, key: KeyInfo) -> None:
        """Drop anything cached about ``key`` (after rotation or revocation)."""
        ...


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class StoreKeyResolver:
    """Keys from the DuckDB store, looked up in a thread, briefly cached.

    The cache holds only successful lookups, keyed by the secret's SHA-256, for
    ``ttl_s``: a key revoked by another process stops working within that bound, and
    one rotated through this server at once (``forget``). Secrets that proved valid are
    also remembered (digest only, up to ``KNOWN_KEYS``) so that ``recognizes`` lets them
    through to a lookup while their address is refused for others' bad keys.

    A lookup runs in a thread while ``forget`` may run on the loop: a generation
    counter, bumped by ``forget``, keeps a lookup that read a key before its
    revocation or rotation from caching that stale answer afterwards.
    """

    KNOWN_KEYS = 10_000

    def __init__(self, store: MetricsStore, *, ttl_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[bytes, tuple[float, KeyInfo]] = {}
        self._known: dict[bytes, str] = {}  # digest -> key id, oldest first
        self._generation = 0  # bumped by every forget()

    @property
    def generation(self) -> int:
        """How many invalidations this resolver has seen."""
        return self._generation

    def recognizes(self, secret: str) -> bool:
        return _digest(secret) in self._known

    async def resolve(self, secret: str) -> KeyInfo | None:
        digest = _digest(secret)
        hit = self._cache.get(digest)
        now = self._clock()
        if hit is not None and hit[0] > now:
            return hit[1]
        generation = self._generation
        info = await asyncio.to_thread(self._store.authenticate, secret)
        if info is None or info.revoked_at is not None:
            self._cache.pop(digest, None)
            self._known.pop(digest, None)
            return None
        if generation != self._generation:
            # A key was revoked or rotated while this lookup ran: the answer may predate
            # it. It stands for this one request (it raced), but is not remembered.
            return info
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now + self._ttl_s, info)
        self._known.pop(digest, None)
        self._known[digest] = info.id  # most recent last
        if len(self._known) > self.KNOWN_KEYS:
            del self._known[next(iter(self._known))]
        return info

    def forget(self, key: KeyInfo) -> None:
        self._generation += 1
        for digest, (_, info) in list(self._cache.items()):
            if info.id == key.id:
                del self._cache[digest]
        for digest, key_id in list(self._known.items()):
            if key_id == key.id:
                del self._known[digest]


class StaticKeyResolver:
    """Fixed tokens (``gpufleet simulate``): each maps to a key, compared in constant time."""

    def __init__(self, tokens: dict[str, KeyInfo]) -> None:
        self._tokens = [(_digest(token), info) for token, info in tokens.items()]

    @classmethod
    def operator(cls, token: str, *, name: str = "simulate", account: str = "default"
                 ) -> StaticKeyResolver:
        info = KeyInfo(id=f"static-{name}", name=name, account=account, scopes=[OPERATOR],
                       prefix=token[:8], created_at=datetime.now(UTC))
        return cls({token: info})

    async def resolve(self, secret: str) -> KeyInfo | None:
        digest = _digest(secret)
        found = None
        for known, info in self._tokens:  # no early exit: time does not depend on which
            if hmac.compare_digest(known, digest):
                found = info
        return found

    def recognizes(self, secret: str) -> bool:
        """Always: a lookup here is a few hashes, never I/O."""
        return True

    def forget(self, key: KeyInfo) -> None:
        """Static tokens cannot be rotated; nothing is cached."""


async def authenticate(request: Request, resolver: KeyResolver | None) -> KeyInfo:
    """The request's key (and ``request.key_name/account/scopes`` set), or 401."""
    secret = presented_secret(request)
    if secret is None or resolver is None:
        raise unauthorized()
    info = await resolver.resolve(secret)
    if info is None:
        raise unauthorized()
    request.key_name = info.name
    request.account = info.account
    request.scopes = frozenset(info.scopes)
    return info

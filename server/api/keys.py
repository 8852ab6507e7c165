"""``/v1/keys/rotate`` and ``/v1/keys/self``: a key replaces its secret, or says which key it is.

A rotation keeps the key's id, name and account, so ``/v1/keys/self`` answers the same
identity before and after one: an agent uses that to deliver what it spooled under
the old secret, and only then.
"""

from __future__ import annotations

import asyncio
import logging

from gpufleet.server.api.context import ApiContext
from gpufleet.server.api.guard import add_route
from gpufleet.server.auth import ANY_KEY, authenticate, presented_secret, unauthorized
from gpufleet.server.http.router import Router
from gpufleet.server.http.types import Request, Response
from gpufleet.server.schemas import KeyCreated, KeyInfo
from gpufleet.server.store import StaleSecretError, UnknownKeyError

log = logging.getLogger("gpufleet.auth")

# A response carrying a secret must not be kept by any cache, shared or the client's own.
SECRET_HEADERS: tuple[tuple[str, str], ...] = (("Cache-Control", "no-store"), ("Pragma", "no-cache"))


class KeyRoutes:
    def __init__(self, ctx: ApiContext) -> None:
        if ctx.store is None:
            raise ValueError("key rotation needs a store")
        self._ctx = ctx
        self._store = ctx.store

    def register(self, router: Router) -> None:
        add_route(router, self._ctx, "POST", "/v1/keys/rotate", self.rotate, scope=ANY_KEY,
                  limit="key_rotation", name="rotateKey", response_model=KeyCreated,
                  summary="Replace the calling key with a new secret (shown once)")
        add_route(router, self._ctx, "GET", "/v1/keys/self", self.whoami, scope=ANY_KEY,
                  limit="key_self", name="getOwnKey", response_model=KeyInfo,
                  summary="The calling key: its id, name, account, scopes and rotations (never "
                          "its secret); the same across rotations")

    async def whoami(self, request: Request) -> Response:
        key = await authenticate(request, self._ctx.resolver)
        # Read now, not from the resolver's cache: the answer lists every rotation.
        listed = await asyncio.to_thread(self._store.list_keys, key.account)
        for info in listed:
            if info.id == key.id and info.revoked_at is None:
                return Response.json(info)
        raise unauthorized()  # revoked since the guard resolved the secret

    async def rotate(self, request: Request) -> Response:
        # The guard authenticated already; resolving again gives this handler the key's id.
        key = await authenticate(request, self._ctx.resolver)
        # Only while the presented secret is still the key's: a second rotation sent with
        # the same secret (or one cached after another process rotated or revoked the key)
        # is a 401, not a second new secret that silently replaces the first.
        rotation = asyncio.ensure_future(asyncio.to_thread(
            self._store.rotate_key, key.id, presented_secret=presented_secret(request)))
        try:
            created = await _outlive_cancellation(rotation)
        except (StaleSecretError, UnknownKeyError):
            if self._ctx.resolver is not None:
                self._ctx.resolver.forget(key)
            raise unauthorized() from None
        if self._ctx.resolver is not None:
            self._ctx.resolver.forget(key)
        log.info("key %r of account %r rotated", key.name, key.account)
        return Response.json(created, headers=list(SECRET_HEADERS))


async def _outlive_cancellation(rotation: asyncio.Future[KeyCreated]) -> KeyCreated:
    """The rotation's result, even when this request is cancelled (its deadline, a shutdown).

    The rotation commits in a worker thread that nothing can stop: once it has started,
    answering anything but the new secret would lock the caller out (the old secret
    no longer works and the new one is shown nowhere else). So the response waits for
    the commit; the server's deadline then ends without a 504 and the secret is sent.
    """
    cancelled = False
    while True:
        try:
            created = await asyncio.shield(rotation)
            break
        except asyncio.CancelledError:
            if rotation.done() and rotation.cancelled():
                raise
            cancelled = True
    if cancelled:
        # Not re-raised: the deadline's own exit sees a normal return and lets the answer out.
        log.warning("key rotation outlived its request's deadline; answering with the new key")
    return created

"""``/v1/keys/rotate``: a key replaces itself; the old secret stops working at once."""

from __future__ import annotations

import asyncio
import logging

from gpufleet.server.api.context import ApiContext
from gpufleet.server.api.guard import add_route
from gpufleet.server.auth import ANY_KEY, authenticate, presented_secret, unauthorized
from gpufleet.server.http.router import Router
from gpufleet.server.http.types import Request, Response
from gpufleet.server.schemas import KeyCreated
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

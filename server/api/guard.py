"""Wraps a route's handler with authentication, scope checks and its rate limit.

Order: who is asking (401) -> take a token from their bucket (429) -> may they
(403) -> the handler. A limited route carries ``X-RateLimit-*`` on every response,
errors included; a request without a valid key is limited by client address, so
guessing keys is limited too.

On every authenticated route, limited or not, presented keys that turn out invalid
take a token from their client address's ``failed_auth`` bucket. Past it, each
further wrong key from that address gets 429 with ``Retry-After`` instead of 401, so
guessing is slowed and learns nothing; every key is still looked up, and one that
verifies is served whatever its address's bucket holds (behind a proxy, or on a
shared NAT, other clients' failures never lock a valid key out). The client address
is the request's ``remote``: behind ``server.trusted_proxies``, X-Forwarded-For's.
"""

from __future__ import annotations

from typing import Any

from gpufleet.server.api.context import ApiContext
from gpufleet.server.auth import KeyResolver, allows, authenticate, forbidden, presented_secret
from gpufleet.server.http.errors import error_response
from gpufleet.server.http.router import Route, Router
from gpufleet.server.http.types import Handler, HttpError, Request, Response
from gpufleet.server.ratelimit import RateLimiter, rate_limited
from gpufleet.server.schemas import KeyInfo

FAILED_AUTH = "failed_auth"


def client_id(request: Request) -> str:
    """The rate-limit identity of a request without a valid key: its client address."""
    address = request.remote or (request.client[0] if request.client else None)
    return f"addr:{address or '?'}"


async def authenticate_limited(request: Request, resolver: KeyResolver | None,
                               limiter: RateLimiter) -> KeyInfo:
    """``authenticate``, with invalid keys limited per client address (429 past the limit).

    A key that verifies is never refused here, whatever its address did before.
    """
    secret = presented_secret(request)
    who = client_id(request)
    try:
        return await authenticate(request, resolver)
    except HttpError as exc:
        if secret is not None and exc.status == 401:
            decision = limiter.take(who, FAILED_AUTH)
            if not decision.allowed:
                raise rate_limited(limiter.rule(FAILED_AUTH), decision) from None
        raise


def guarded(handler: Handler, *, resolver: KeyResolver | None, limiter: RateLimiter,
            scope: str | None, limit: str | None) -> Handler:
    """``handler`` behind auth (when ``scope``) and a rate limit (when ``limit``)."""
    if scope is None and limit is None:
        return handler

    async def guarded_handler(request: Request) -> Response:
        key = None
        refused: HttpError | None = None
        if scope is not None:
            try:
                key = await authenticate_limited(request, resolver, limiter)
            except HttpError as exc:
                if exc.status == 429:
                    return error_response(exc)
                refused = exc
        headers: list[tuple[str, str]] = []
        if limit is not None:
            who = f"key:{key.account}/{key.name}" if key is not None else client_id(request)
            decision = limiter.take(who, limit)
            if not decision.allowed:
                return error_response(rate_limited(limiter.rule(limit), decision))
            headers = decision.headers()
        try:
            if refused is not None:
                raise refused
            if key is not None and scope is not None and not allows(key.scopes, scope):
                raise forbidden(scope)
            response = await handler(request)
        except Exception as exc:  # mapped here so that errors carry the limit headers too
            if not headers:
                raise
            response = error_response(exc)
        response.headers.extend(headers)
        return response

    guarded_handler.__name__ = getattr(handler, "__name__", "handler")
    guarded_handler.rate_limit = limit  # type: ignore[attr-defined]
    return guarded_handler


def add_route(router: Router, ctx: ApiContext, method: str, pattern: str, handler: Handler, *,
              scope: str | None = None, limit: str | None = None, **meta: Any) -> Route:
    """Register ``handler`` guarded by ``scope`` and ``limit``; OpenAPI reads both back."""
    wrapped = guarded(handler, resolver=ctx.resolver, limiter=ctx.limiter, scope=scope,
                      limit=limit)
    return router.add(method, pattern, wrapped, auth=scope, **meta)

"""Token buckets per key and route, and the ``X-RateLimit-*`` headers that describe them.

A bucket holds up to ``requests`` tokens and refills continuously at
``requests / per_s`` tokens a second; a request takes one. Headers on every
response of a limited route:

- ``X-RateLimit-Limit``: the bucket's size (requests per window).
- ``X-RateLimit-Remaining``: whole tokens left after this request.
- ``X-RateLimit-Reset``: Unix time (seconds, rounded up) at which the bucket is full again.

A refused request gets 429, ``Retry-After`` (seconds until one token is back, rounded
up) and ``{"error": "Rate limit exceeded: 100 requests per minute. Retry after 1 s"}``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from gpufleet.server.config import RateLimit, RateLimits
from gpufleet.server.http.types import HttpError

# Past this many buckets, full (idle) ones are dropped: they carry no state.
_PRUNE_ABOVE = 10_000


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_at: float  # Unix time at which the bucket is full again
    retry_after_s: float  # 0 when allowed

    def headers(self) -> list[tuple[str, str]]:
        return [
            ("X-RateLimit-Limit", str(self.limit)),
            ("X-RateLimit-Remaining", str(self.remaining)),
            ("X-RateLimit-Reset", str(math.ceil(self.reset_at))),
        ]


def window_text(per_s: float) -> str:
    named = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}
    return f"per {named[int(per_s)]}" if per_s in named else f"per {per_s:g} s"


def rate_limited(rule: RateLimit, decision: RateDecision) -> HttpError:
    """The 429 for a refused request, with ``Retry-After`` and the bucket's headers."""
    wait = max(1, math.ceil(decision.retry_after_s))
    message = (f"Rate limit exceeded: {rule.requests} requests {window_text(rule.per_s)}. "
               f"Retry after {wait} s")
    headers = dict(decision.headers())
    headers["Retry-After"] = str(wait)
    return HttpError(429, message, headers)


class RateLimiter:
    """Buckets by (who, route); ``take`` is O(1) and runs on the event loop (no locks)."""

    def __init__(self, limits: RateLimits, *, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.limits = limits
        self._clock = clock
        self._wall = wall_clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # -> (tokens, at)

    def rule(self, route: str) -> RateLimit:
        rule = getattr(self.limits, route, None)
        if not isinstance(rule, RateLimit):
            raise KeyError(f"no rate limit named {route!r}")
        return rule

    def take(self, who: str, route: str) -> RateDecision:
        """Take one token from ``who``'s bucket for ``route`` if there is one."""
        return self._decide(who, route, take=True)

    def peek(self, who: str, route: str) -> RateDecision:
        """Whether ``who`` has a token for ``route``, without taking it."""
        return self._decide(who, route, take=False)

    def _decide(self, who: str, route: str, *, take: bool) -> RateDecision:
        rule = self.rule(route)
        capacity = float(rule.requests)
        rate = capacity / rule.per_s
        now = self._clock()
        tokens, at = self._buckets.get((who, route), (capacity, now))
        tokens = min(capacity, tokens + (now - at) * rate)
        allowed = tokens >= 1.0
        if not take:
            return self._decision(rule, tokens, allowed)
        if allowed:
            tokens -= 1.0
        if len(self._buckets) > _PRUNE_ABOVE:
            self._prune(now)
        self._buckets[(who, route)] = (tokens, now)
        return self._decision(rule, tokens, allowed)

    def _decision(self, rule: RateLimit, tokens: float, allowed: bool) -> RateDecision:
        capacity = float(rule.requests)
        rate = capacity / rule.per_s
        wall = self._wall()
        return RateDecision(
            allowed=allowed,
            limit=rule.requests,
            remaining=int(tokens),
            reset_at=wall + (capacity - tokens) / rate,
            retry_after_s=0.0 if allowed else (1.0 - tokens) / rate,
        )

    def _prune(self, now: float) -> None:
        for key, (tokens, at) in list(self._buckets.items()):
            rule = self.rule(key[1])
            if tokens + (now - at) * rule.requests / rule.per_s >= rule.requests:
                del self._buckets[key]

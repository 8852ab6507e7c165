"""What the route handlers share: settings, the GPU backend, the store, purge, keys, limits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from server.auth import KeyResolver
from server.config import Settings
from server.gpu.base import GpuBackend
from server.ratelimit import RateLimiter
from server.schemas import utc_now

if TYPE_CHECKING:
    from server.purge import PurgeService
    from server.store import MetricsStore


@dataclass(slots=True)
class ApiContext:
    settings: Settings
    backend: GpuBackend
    resolver: KeyResolver | None
    limiter: RateLimiter
    store: MetricsStore | None = None
    purge: PurgeService | None = None
    now: Callable[[], datetime] = field(default=utc_now)

"""What the route handlers share: settings, the GPU backend, the store, purge, keys, limits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from gpufleet.server.auth import KeyResolver
from gpufleet.server.config import Settings
from gpufleet.server.gpu.base import GpuBackend
from gpufleet.server.ratelimit import RateLimiter
from gpufleet.server.schemas import utc_now

if TYPE_CHECKING:
    from gpufleet.server.purge import PurgeService
    from gpufleet.server.store import MetricsStore


@dataclass(slots=True)
class ApiContext:
    settings: Settings
    backend: GpuBackend
    resolver: KeyResolver | None
    limiter: RateLimiter
    store: MetricsStore | None = None
    purge: PurgeService | None = None
    now: Callable[[], datetime] = field(default=utc_now)

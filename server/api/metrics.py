"""``GET /metrics``: Prometheus exposition of this node's GPUs and of the server's own health.

Access follows ``[metrics] access``: by default a client on loopback needs no key and
any other needs one with the read scope. A request that came through a proxy
(``Forwarded`` / ``X-Forwarded-For``) is never taken for a loopback client: the proxy
may be local while the client is not.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING

from gpufleet.server.api.context import ApiContext
from gpufleet.server.api.guard import authenticate_limited
from gpufleet.server.auth import READ, allows, forbidden
from gpufleet.server.http.router import Router
from gpufleet.server.http.types import Request, Response
from gpufleet.server.metrics.exposition import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    Family,
    negotiate,
    render,
)
from gpufleet.server.metrics.server import HttpMetrics, build_info, store_families

if TYPE_CHECKING:
    from gpufleet.server.metrics.feed import GpuFeed

PATH = "/metrics"
# The first scrape after start waits this long at most for the first GPU reading.
FIRST_READING_WAIT_S = 5.0

OPENAPI = {
    "description": (
        "Prometheus exposition: dcgm-exporter's GPU series (DCGM_FI_DEV_*) and gpufleet's own "
        "(gpufleet_*). Text format 0.0.4, or OpenMetrics 1.0 when Accept asks for "
        "application/openmetrics-text. By default open to loopback clients; others need a key "
        "with the read scope ([metrics] access)."),
    "security": [{}, {"bearerAuth": []}, {"apiKeyHeader": []}],
    "responses": {"200": {"description": "Success", "content": {
        "text/plain; version=0.0.4": {"schema": {"type": "string"}},
        "application/openmetrics-text; version=1.0.0": {"schema": {"type": "string"}}}}},
}


def is_loopback(request: Request) -> bool:
    """Whether the client is this machine itself, not a proxy speaking for someone else."""
    if request.client is None or "forwarded" in request.headers \
            or "x-forwarded-for" in request.headers:
        return False
    try:
        return ipaddress.ip_address(request.client[0].split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def gpu_series_wanted(ctx: ApiContext) -> bool:
    """Whether this node's GPU series belong in Prometheus.

    Real GPUs, yes. A simulated node only when the simulation was asked for (``serve
    --simulate``, or a storeless ``gpufleet simulate`` node): a ``serve`` that found no
    usable GPU serves the simulated node's API, but made-up readings must not reach a
    Prometheus that scrapes it as a real node (as they never reach chargeback).
    """
    return not ctx.backend.simulated or ctx.settings.server.simulate or ctx.store is None


class MetricsRoutes:
    def __init__(self, ctx: ApiContext, feed: GpuFeed, http_metrics: HttpMetrics, *,
                 on_scrape: Callable[[], None] | None = None) -> None:
        """``on_scrape`` starts the feed's refresh (the first scrape is its signal)."""
        self._ctx = ctx
        self._on_scrape = on_scrape
        self._feed = feed
        self._http = http_metrics
        self.serves_gpus = gpu_series_wanted(ctx)

    def register(self, router: Router) -> None:
        router.get(PATH, self.metrics, name="getMetrics", openapi=OPENAPI,
                   summary="Prometheus metrics: GPUs (dcgm-exporter names) and server health")

    async def _authorize(self, request: Request) -> None:
        access = self._ctx.settings.metrics.access
        if access == "open" or (access == "loopback" and is_loopback(request)):
            return
        key = await authenticate_limited(request, self._ctx.resolver, self._ctx.limiter)
        if not allows(key.scopes, READ):
            raise forbidden(READ)

    async def metrics(self, request: Request) -> Response:
        await self._authorize(request)
        openmetrics = negotiate(request.header("accept"))
        reading = None
        if self.serves_gpus:
            if self._on_scrape is not None:
                self._on_scrape()
            reading = await self._feed.first(FIRST_READING_WAIT_S)
        up = reading is not None and self._feed.error is None
        parts: list[Family | str] = [build_info()]
        if up and reading is not None:
            rendered = reading.rendered()
            parts.append(rendered.openmetrics if openmetrics else rendered.text)
        parts.extend(self._feed_families(up))
        parts.extend(self._http.families())
        if self._ctx.store is not None:
            parts.extend(store_families(self._ctx.store))
        body = render(parts, openmetrics=openmetrics)
        return Response.text(body, content_type=OPENMETRICS_CONTENT_TYPE if openmetrics
                             else TEXT_CONTENT_TYPE)

    def _feed_families(self, up: bool) -> list[Family]:
        backend = Family("gpufleet_gpu_backend_up", "gauge",
                         "1 when the last GPU reading succeeded (the GPU series are served), "
                         "else 0.")
        backend.add((), 1 if up else 0)
        families = [backend]
        if not self.serves_gpus:
            withheld = Family("gpufleet_gpu_series_withheld", "gauge",
                              "1: no usable GPU and no --simulate, so the simulated node's "
                              "readings are not exported.")
            withheld.add((), 1)
            return [*families, withheld]
        age = self._feed.age_s()
        if age is not None:
            family = Family("gpufleet_gpu_reading_age_seconds", "gauge",
                            "Age of the GPU reading this scrape serves (readings are taken "
                            "every [metrics] refresh_s, never per scrape).", unit="seconds")
            family.add((), round(age, 3))
            families.append(family)
        return families

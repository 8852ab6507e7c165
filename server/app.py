"""ServerApp: composes settings, GPU backend, store, purge, keys and limits into one server.

A node with a store (``gpufleet serve``) serves the operator API and the collector
API (ingest, chargeback, heartbeats, hosts, key rotation) and samples its own GPUs
into its store; a node without one (``gpufleet simulate``) serves the operator API only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gpufleet.server import __version__
from gpufleet.server.api.agents import AgentRoutes
from gpufleet.server.api.chargeback import ChargebackRoutes
from gpufleet.server.api.context import ApiContext
from gpufleet.server.api.export import ExportRoutes
from gpufleet.server.api.gpu import GpuRoutes
from gpufleet.server.api.health import HealthRoutes
from gpufleet.server.api.ingest import IngestRoutes
from gpufleet.server.api.keys import KeyRoutes
from gpufleet.server.api.metrics import MetricsRoutes
from gpufleet.server.api.processes import ProcessRoutes
from gpufleet.server.api.validation import validate_batch
from gpufleet.server.auth import KeyResolver, StoreKeyResolver
from gpufleet.server.config import Settings
from gpufleet.server.gpu.base import GpuBackend
from gpufleet.server.http.forwarded import ClientAddresses, parse_networks
from gpufleet.server.http.router import Router
from gpufleet.server.http.server import HttpServer
from gpufleet.server.http.types import Request, Response
from gpufleet.server.metrics.feed import GpuFeed, attribution_from_samples
from gpufleet.server.metrics.server import HttpMetrics
from gpufleet.server.openapi import openapi_document
from gpufleet.server.ratelimit import RateLimiter
from gpufleet.server.schemas import Heartbeat, utc_now

if TYPE_CHECKING:
    from gpufleet.server.purge import PurgeService
    from gpufleet.server.store import MetricsStore

log = logging.getLogger("gpufleet.server")


def ssl_context_for(settings: Settings) -> ssl.SSLContext | None:
    """A server TLS context when both a certificate and a key are configured."""
    cert, key = settings.server.tls_cert, settings.server.tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ValueError("TLS needs both a certificate (--tls-cert) and a key (--tls-key)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def default_purge_service(settings: Settings, backend: GpuBackend) -> PurgeService:
    from gpufleet.server.purge import PurgeService
    from gpufleet.server.runtimes import build_adapters

    return PurgeService(backend, build_adapters(settings.runtimes, backend),
                        settle_s=settings.server.purge_settle_s)


class ServerApp:
    """One gpufleet server: routes, auth, limits and (with a store) its own sampler."""

    def __init__(self, settings: Settings, *, backend: GpuBackend,
                 store: MetricsStore | None = None, key_resolver: KeyResolver | None = None,
                 purge: PurgeService | None = None,
                 clock: Callable[[], datetime] = utc_now,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """``clock`` stamps requests and the sampler's heartbeats; ``monotonic`` paces the sampler."""
        self.settings = settings
        self.backend = backend
        self.store = store
        resolver = key_resolver or (StoreKeyResolver(store) if store is not None else None)
        self.purge = purge if purge is not None else default_purge_service(settings, backend)
        self.context = ApiContext(settings=settings, backend=backend, resolver=resolver,
                                  limiter=RateLimiter(settings.rate_limits), store=store,
                                  purge=self.purge, now=clock)
        # /metrics: request counts and latency observed by the HTTP server, GPU readings
        # from the sampler or the feed's own refresh (never per scrape)
        self.http_metrics = HttpMetrics() if settings.metrics.enabled else None
        self.feed = GpuFeed(backend, self._attribute, refresh_s=settings.metrics.refresh_s,
                            monotonic=monotonic)
        self._attributor: Any = None
        self._feed_task: asyncio.Task[None] | None = None
        self._stopping = False
        self.router = self._build_router()
        trusted = parse_networks(settings.server.trusted_proxies)
        self.http = HttpServer(self.router, settings.limits, ssl_context=ssl_context_for(settings),
                               addresses=ClientAddresses(trusted),
                               observer=self.http_metrics.observe if self.http_metrics else None)
        self._openapi: bytes | None = None
        self._sampler_task: asyncio.Task[None] | None = None
        self.samples_written = 0  # by the in-process sampler (tests and status lines read it)
        self.next_sample_at: float | None = None  # monotonic time of the sampler's next tick
        self._monotonic = monotonic

    def _build_router(self) -> Router:
        router = Router()
        GpuRoutes(self.context).register(router)
        ProcessRoutes(self.context).register(router)
        if self.store is not None:
            IngestRoutes(self.context).register(router)
            ChargebackRoutes(self.context).register(router)
            AgentRoutes(self.context).register(router)
            KeyRoutes(self.context).register(router)
            ExportRoutes(self.context).register(router)
        router.get("/v1/openapi.json", self._openapi_json, name="getOpenApi",
                   summary="This API's OpenAPI 3.1 document")
        HealthRoutes(self.context).register(router)
        self._metrics_routes = None
        if self.http_metrics is not None:
            self._metrics_routes = MetricsRoutes(self.context, self.feed, self.http_metrics,
                                                 on_scrape=self.ensure_feed)
            self._metrics_routes.register(router)
        return router

    @property
    def url(self) -> str:
        return self.http.url

    async def start(self, host: str | None = None, port: int | None = None) -> tuple[str, int]:
        """Listen (settings' host and port unless given; port 0 picks one) and start sampling."""
        address = await self.http.start(host or self.settings.server.host,
                                        self.settings.server.port if port is None else port)
        if self.store is not None and self.settings.sampler.enabled:
            self._sampler_task = asyncio.create_task(self._run_sampler(), name="gpufleet-sampler")
        return address

    def ensure_feed(self) -> None:
        """Start refreshing GPU readings for /metrics: at the first scrape, so a node that
        nobody scrapes reads nothing for it."""
        if self._feed_task is None and not self._stopping:
            self._feed_task = asyncio.create_task(
                self.feed.run(sampler_running=self._sampler_task is not None),
                name="gpufleet-metrics-feed")

    async def stop(self) -> None:
        """Stop sampling, stop accepting, let in-flight requests finish. The store stays open."""
        await self.stop_sampler()
        await self.http.shutdown()

    def _attribute(self, snapshot: Any) -> Any:
        """Who each GPU works for, as the sampler attributes it (called in the feed's thread)."""
        if self._attributor is None:
            from gpufleet.server.agent.attribution import ProcessAttributor

            self._attributor = ProcessAttributor(self.settings.agent)
        return self._attributor.attribute(snapshot)

    async def stop_sampler(self) -> None:
        self._stopping = True
        if self._feed_task is not None:
            self._feed_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feed_task
            self._feed_task = None
        if self._sampler_task is not None:
            self._sampler_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler_task
            self._sampler_task = None

    async def _openapi_json(self, request: Request) -> Response:
        if self._openapi is None:
            self._openapi = Response.json(openapi_document(self.router.routes())).body
        return Response(body=self._openapi)

    async def _run_sampler(self) -> None:
        """On a ``sampler.interval_s`` grid: this node's samples into its store, and a heartbeat.

        The next tick is the first grid point after the last one finished: a slow tick
        skips points instead of stacking them, and the schedule does not drift.
        """
        from gpufleet.server.agent.attribution import ProcessAttributor
        from gpufleet.server.agent.runner import next_tick
        from gpufleet.server.agent.sampler import Sampler

        assert self.store is not None
        # the same attribution as `gpufleet agent`: [agent] rules, then Slurm / Kubernetes /
        # Run:ai facts of the processes on each GPU, then the [agent] defaults
        sampler = Sampler(self.backend, ProcessAttributor(self.settings.agent))
        account = self.settings.server.account
        interval = self.settings.sampler.interval_s
        start = self._monotonic()
        while True:
            try:
                await self.sample_once(sampler, account)
            except asyncio.CancelledError:
                raise
            except Exception:  # one failed tick must not end sampling
                log.exception("in-process sampling failed; trying again next interval")
            self.next_sample_at = next_tick(start, interval, self._monotonic())
            await asyncio.sleep(max(0.0, self.next_sample_at - self._monotonic()))

    async def sample_once(self, sampler: Any, account: str) -> int:
        """One tick of the in-process sampler; returns how many samples were stored.

        Samples and heartbeat name the host as the backend does (a simulated node's own
        name), so the hosts listing shows this node's last sample next to its heartbeat.
        """
        assert self.store is not None
        samples = await asyncio.to_thread(sampler.sample)
        now = self.context.now()
        snapshot = sampler.last_snapshot
        if snapshot is not None:
            self.feed.publish(snapshot, attribution_from_samples(samples))
        hostname = (snapshot.node.hostname if snapshot else "") or socket.gethostname()
        inserted = 0
        if samples and self.backend.simulated:  # marked before written: never unmarked
            from gpufleet.server.store.simulated import SIMULATED_SAMPLER

            await asyncio.to_thread(self.store.mark_simulated, SIMULATED_SAMPLER, now)
        if samples:
            rows = validate_batch(samples, max_samples=max(len(samples), 1), now=now)
            result = await self.store.writer.submit(account, rows, now)
            inserted = result.inserted
            self.samples_written += inserted
        gpu_count = len(snapshot.gpus) if snapshot else len(samples)
        heartbeat = Heartbeat(agent_version=__version__, gpu_count=gpu_count,
                              hostname=hostname[:255] or "localhost")
        await asyncio.to_thread(self.store.record_heartbeat, account, heartbeat, now)
        return inserted

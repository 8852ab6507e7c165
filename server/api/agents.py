"""``/v1/agent/heartbeat`` and ``/v1/agent/hosts``: which hosts report, and how recently."""

from __future__ import annotations

import asyncio

from gpufleet.server.api.context import ApiContext
from gpufleet.server.api.guard import add_route
from gpufleet.server.api.simulated import admit as admit_simulated
from gpufleet.server.auth import INGEST, READ
from gpufleet.server.http.router import Router
from gpufleet.server.http.types import Request, Response
from gpufleet.server.schemas import Heartbeat, HeartbeatResult, HostsResponse


class AgentRoutes:
    def __init__(self, ctx: ApiContext) -> None:
        if ctx.store is None:
            raise ValueError("heartbeats need a store")
        self._ctx = ctx
        self._store = ctx.store

    def register(self, router: Router) -> None:
        add_route(router, self._ctx, "POST", "/v1/agent/heartbeat", self.heartbeat, scope=INGEST,
                  limit="heartbeat", name="agentHeartbeat", request_model=Heartbeat,
                  response_model=HeartbeatResult, summary="Record that a host is alive")
        add_route(router, self._ctx, "GET", "/v1/agent/hosts", self.hosts, scope=READ,
                  limit="hosts", name="listHosts", response_model=HostsResponse,
                  summary="Hosts of the caller's account and whether they still report")

    async def heartbeat(self, request: Request) -> Response:
        await admit_simulated(self._ctx, request)  # a simulated host never joins a real store's hosts
        hb = Heartbeat.model_validate(request.json())
        at = self._ctx.now()
        await asyncio.to_thread(self._store.record_heartbeat, request.account or "", hb, at)
        return Response.json(HeartbeatResult(hostname=hb.hostname, received_at=at))

    async def hosts(self, request: Request) -> Response:
        now = self._ctx.now()
        interval = self._ctx.settings.server.heartbeat_interval_s
        hosts = await asyncio.to_thread(self._store.list_hosts, request.account or "", now,
                                        interval)
        simulated = self._store.simulated is not None  # the store's mark, as chargeback says it
        return Response.json(HostsResponse(generated_at=now, heartbeat_interval_s=int(interval),
                                           hosts=hosts, simulated=simulated))

"""``/healthz`` (the process answers) and ``/readyz`` (it can take writes now): no key needed.

Ready means: the store's writer thread runs, the store's filesystem has room
(``MIN_FREE_BYTES``) and no write was refused for want of it in the last
``STORAGE_RETRY_AFTER_S`` seconds without one succeeding since, and acknowledged
samples reach the usage rollup within ``limits.max_fold_lag_s``. A readiness
answer never depends on traffic: a balancer that stops sending writes while the
disk is full sees the node ready again once space is back.
"""

from __future__ import annotations

import os
import time

from gpufleet.server.api.context import ApiContext
from gpufleet.server.api.guard import add_route
from gpufleet.server.http.errors import STORAGE_RETRY_AFTER_S
from gpufleet.server.http.router import Router
from gpufleet.server.http.types import Request, Response
from gpufleet.server.schemas import HealthStatus, ReadyChecks, ReadyStatus

MIN_FREE_BYTES = 4 * 1024 * 1024  # a DuckDB commit writes its WAL in blocks of up to 256 KiB
_HEALTHY = Response.json(HealthStatus()).body


class HealthRoutes:
    def __init__(self, ctx: ApiContext) -> None:
        self._ctx = ctx

    def register(self, router: Router) -> None:
        add_route(router, self._ctx, "GET", "/healthz", self.healthz, name="healthz",
                  response_model=HealthStatus, summary="Liveness: the server answers (no key)")
        add_route(router, self._ctx, "GET", "/readyz", self.readyz, name="readyz",
                  response_model=ReadyStatus,
                  summary="Readiness: store writable, writer alive, rollup current (no key); "
                          "503 when not")

    async def healthz(self, request: Request) -> Response:
        return Response(body=_HEALTHY)

    async def readyz(self, request: Request) -> Response:
        store = self._ctx.store
        if store is None:  # an operator-only node (`gpufleet simulate`): nothing to write
            return Response.json(ReadyStatus(status="ready"))
        writer = store.writer
        checks = ReadyChecks(store_writable=self._writable(), writer_alive=writer.alive,
                             fold_lag_s=round(writer.fold_lag_s, 3))
        problems = []
        if not checks.writer_alive:
            problems.append("the store's writer has stopped")
        if not checks.store_writable:
            problems.append("the store cannot write (disk full or I/O error)")
        max_lag = self._ctx.settings.limits.max_fold_lag_s
        if checks.fold_lag_s > max_lag:
            problems.append(f"the usage rollup is {checks.fold_lag_s:.0f} s behind "
                            f"(limit {max_lag:g} s)")
        if problems:
            body = ReadyStatus(status="not ready", checks=checks, error="; ".join(problems))
            return Response.json(body, status=503, headers=[("Retry-After", "5")])
        return Response.json(ReadyStatus(status="ready", checks=checks))

    def _writable(self) -> bool:
        store = self._ctx.store
        assert store is not None
        writer = store.writer
        failed_at = writer.storage_failed_at
        if writer.storage_error is not None and failed_at is not None \
                and time.monotonic() - failed_at < STORAGE_RETRY_AFTER_S:
            return False
        try:
            fs = os.statvfs(store.path.parent)
        except OSError:
            return False
        return fs.f_bavail * fs.f_frsize >= MIN_FREE_BYTES

"""Operator GPU routes: ``/v1/gpu/status``, ``/v1/gpu/memory``, ``/v1/gpu/purge``."""

from __future__ import annotations

import asyncio
import logging

from gpufleet.server.api.context import ApiContext
from gpufleet.server.api.guard import add_route
from gpufleet.server.auth import OPERATOR
from gpufleet.server.config import Settings
from gpufleet.server.gpu.base import BackendUnavailable, GpuBackend, GpuSnapshot
from gpufleet.server.http.router import Router
from gpufleet.server.http.types import HttpError, Request, Response
from gpufleet.server.schemas import (
    GpuMemoryEntry,
    GpuMemoryResponse,
    GpuStatusResponse,
    LoadedModel,
    PurgeRequest,
    PurgeResult,
)

log = logging.getLogger("gpufleet.api")

# The status route lists loaded models when it can; a slow runtime must not hold it up.
MODELS_TIMEOUT_S = 1.0
# A process that ignored SIGKILL's grace is waited on this much longer (ProcessAdapter.kill_wait_s).
PROCESS_KILL_WAIT_S = 5.0
PURGE_MARGIN_S = 10.0


def purge_deadline_s(settings: Settings) -> float:
    """How long POST /v1/gpu/purge may run: never less than the server's handler deadline.

    A purge lists every runtime (concurrently), unloads each server runtime's models
    waiting up to its ``timeout_s``, signals processes (grace periods overlap, then
    SIGKILL), and finally waits up to ``purge_settle_s`` for memory to settle.
    """
    runtimes = settings.runtimes
    listing = max((r.timeout_s for r in runtimes), default=0.0)
    unloads = sum(r.timeout_s for r in runtimes if r.type != "process")
    signals = max((r.grace_s + PROCESS_KILL_WAIT_S for r in runtimes if r.type == "process"),
                  default=0.0)
    needed = settings.server.purge_settle_s + listing + unloads + signals + PURGE_MARGIN_S
    return max(settings.limits.handler_timeout_s, needed)


class SnapshotSource:
    """Reads the backend in a worker thread; concurrent callers share one reading."""

    def __init__(self, backend: GpuBackend) -> None:
        self._backend = backend
        self._inflight: asyncio.Future[GpuSnapshot] | None = None

    async def snapshot(self) -> GpuSnapshot:
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(asyncio.to_thread(self._backend.snapshot))
            self._inflight.add_done_callback(self._clear)
        try:
            return await asyncio.shield(self._inflight)
        except BackendUnavailable as exc:
            raise HttpError(503, f"GPU backend unavailable: {exc}") from None

    def _clear(self, future: asyncio.Future[GpuSnapshot]) -> None:
        if self._inflight is future:
            self._inflight = None
        if not future.cancelled():
            future.exception()  # retrieved here so a failure nobody awaited is not logged


class GpuRoutes:
    def __init__(self, ctx: ApiContext) -> None:
        self._ctx = ctx
        self._source = SnapshotSource(ctx.backend)

    def register(self, router: Router) -> None:
        ctx = self._ctx
        add_route(router, ctx, "GET", "/v1/gpu/status", self.status, scope=OPERATOR,
                  name="getGpuStatus", response_model=GpuStatusResponse,
                  summary="GPU status: memory, utilization, temperature, processes")
        add_route(router, ctx, "GET", "/v1/gpu/memory", self.memory, scope=OPERATOR,
                  name="getGpuMemory", response_model=GpuMemoryResponse,
                  summary="Simplified GPU memory, one entry per GPU")
        add_route(router, ctx, "POST", "/v1/gpu/purge", self.purge, scope=OPERATOR,
                  name="purgeGpu", request_model=PurgeRequest, response_model=PurgeResult,
                  summary="Unload all models and free GPU memory",
                  timeout_s=purge_deadline_s(ctx.settings))

    async def status(self, request: Request) -> Response:
        snap, models = await asyncio.gather(self._source.snapshot(), self._loaded_models())
        body = GpuStatusResponse(timestamp=snap.taken_at, gpus=list(snap.gpus),
                                 processes=list(snap.processes), total_gpus=len(snap.gpus),
                                 node=snap.node, models=models)
        return Response.json(body)

    async def memory(self, request: Request) -> Response:
        snap = await self._source.snapshot()
        entries = [GpuMemoryEntry.from_memory(gpu.memory, index=gpu.index, uuid=gpu.uuid,
                                              name=gpu.name) for gpu in snap.gpus]
        return Response.json(GpuMemoryResponse(timestamp=snap.taken_at, memory=entries,
                                               node=snap.node, processes=list(snap.processes)))

    async def purge(self, request: Request) -> Response:
        purge = self._ctx.purge
        if purge is None:
            raise HttpError(503, "Purge is not available on this node")
        purge_request = (PurgeRequest.model_validate(request.json()) if request.body.strip()
                         else PurgeRequest())
        # The purge module pulls in the runtimes: imported on first use.
        from gpufleet.server.purge import InvalidPurgeRequest, PurgeProgress

        progress = PurgeProgress()
        result: PurgeResult | None = None
        failure: BaseException | None = None
        try:
            result = await purge.purge(purge_request, progress)
        except InvalidPurgeRequest as exc:
            raise HttpError(400, str(exc)) from None
        except BackendUnavailable as exc:
            failure = exc
            raise HttpError(503, f"GPU backend unavailable: {exc}") from None
        except BaseException as exc:  # a deadline, a shutdown or a bug: audited below, re-raised
            failure = exc
            raise
        finally:
            # Every purge that got as far as signalling anything leaves its audit row,
            # finished or not ("Every purge ... is appended to an audit table").
            if result is None and progress.started:
                result = purge.interrupted_result(progress, _interruption(failure))
            if result is not None:
                await self._audit(request, purge_request.force, result)
        return Response.json(result)

    async def _audit(self, request: Request, force: bool, result: PurgeResult) -> None:
        store = self._ctx.store
        if store is None:
            return
        write = asyncio.ensure_future(asyncio.to_thread(
            store.record_purge, request.account or "", request.key_name or "", force, result))
        try:
            # Shielded: a second cancellation must not drop the row (the thread writes it anyway).
            await asyncio.shield(write)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("writing the purge audit row failed")

    async def _loaded_models(self) -> list[LoadedModel] | None:
        purge = self._ctx.purge
        if purge is None:
            return None
        # Each runtime gets its own bound: a slow one is left out (and logged), the rest shown.
        return await purge.loaded_models(timeout_s=MODELS_TIMEOUT_S)


def _interruption(failure: BaseException | None) -> str:
    """Why a started purge has no result, in words for its audit row."""
    if failure is None or isinstance(failure, asyncio.CancelledError):
        return "purge interrupted (deadline or shutdown) before it finished"
    if isinstance(failure, BackendUnavailable):
        return f"purge stopped: GPU backend unavailable: {failure}"
    return f"purge stopped by an unexpected {type(failure).__name__}"

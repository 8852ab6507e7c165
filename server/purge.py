"""The purge: ask every runtime to let go of what it holds, then measure what was freed.

Flow: read memory before; list every adapter's models (concurrently; one failing
adapter is reported, not fatal); unload in adapter order (model servers before
processes), skipping models in use unless forced; read memory after once it
settles; compute status and a recommendation from what actually happened.
Nothing here clears another process's CUDA cache, so no action claims to.

The result tells what happened to memory, not what was attempted: its figures cover
the GPUs asked for and every GPU an unloaded model also occupied (a model sharded
over GPUs 0-3 frees all four when a purge of GPU 3 unloads it), ``gpus`` lists every
GPU whose memory changed, and memory still held by a process afterwards makes the
purge ``partial`` with the holders named, force or not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from gpufleet.server.gpu.base import GpuBackend, GpuSnapshot
from gpufleet.server.runtimes.base import ModelGone, RuntimeAdapter, RuntimeAdapterError
from gpufleet.server.schemas import (
    LoadedModel,
    MemorySummary,
    PurgeGpuMemory,
    PurgeRequest,
    PurgeResult,
    mb_to_gb,
    percent,
    utc_now,
)

log = logging.getLogger("gpufleet.purge")

SUCCESS_TEXT = "GPU memory cleared successfully"
INTERRUPTED_TEXT = ("The purge stopped before it finished: check GPU memory and the runtimes, "
                    "then purge again.")
MAX_HOLDERS_NAMED = 5
# The document's unit: its "GB" figures are MiB / 1024 (81920 MiB is 80.0 GB), so every
# size in a recommendation is written the same way, next to memory_freed_gb.
SIZE_UNIT = "GB"


class InvalidPurgeRequest(ValueError):
    """The request names GPUs this node does not have (a 400)."""


@dataclass(slots=True)
class _Outcome:
    actions: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    in_use_skipped: list[str] = field(default_factory=list)
    failed_runtimes: list[str] = field(default_factory=list)
    expected_drop_mb: int = 0
    measure_failed: bool = False
    unloading: list[str] = field(default_factory=list)  # started and not yet returned
    spanned: set[int] = field(default_factory=set)  # every GPU an unloaded model occupied

    def merge(self, other: _Outcome) -> None:
        self.unloading += other.unloading
        self.spanned |= other.spanned
        self.actions += other.actions
        self.unloaded += other.unloaded
        self.errors += other.errors
        self.skipped += other.skipped
        self.in_use_skipped += other.in_use_skipped
        self.failed_runtimes += [r for r in other.failed_runtimes if r not in self.failed_runtimes]
        self.expected_drop_mb += other.expected_drop_mb

    def failed(self, runtime: str, message: str) -> None:
        self.errors.append(message)
        if runtime not in self.failed_runtimes:
            self.failed_runtimes.append(runtime)


@dataclass(slots=True)
class PurgeProgress:
    """What a purge has done so far: enough for an audit row if it never finishes.

    ``started`` turns true once the purge holds the lock and has read memory: from
    then on processes may be signalled, so a purge cut short must still be audited.
    """

    before: GpuSnapshot | None = None
    selected: frozenset[int] = frozenset()
    outcome: _Outcome = field(default_factory=_Outcome)
    in_flight: list[_Outcome] = field(default_factory=list)  # parallel unloads' parts

    @property
    def started(self) -> bool:
        return self.before is not None


class PurgeService:
    """Purges one node's GPUs through its runtime adapters; one purge at a time."""

    def __init__(self, backend: GpuBackend, adapters: Sequence[RuntimeAdapter], *,
                 settle_s: float = 5.0, poll_interval_s: float = 0.25,
                 settle_tolerance_mb: int = 64,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 now: Callable[[], datetime] = utc_now) -> None:
        self.backend = backend
        self.adapters = list(adapters)
        self.settle_s = settle_s
        self.poll_interval_s = poll_interval_s
        self.settle_tolerance_mb = settle_tolerance_mb
        self._clock = clock
        self._sleep = sleep
        self._now = now
        self._lock = asyncio.Lock()

    async def loaded_models(self, *, timeout_s: float | None = None) -> list[LoadedModel]:
        """Every adapter's models; one that fails or takes over ``timeout_s`` is logged and left out."""
        models: list[LoadedModel] = []
        for adapter, listed in await self._list_all(timeout_s):
            if isinstance(listed, TimeoutError):
                log.warning("%s: listing models took over %gs", adapter.name, timeout_s)
            elif isinstance(listed, BaseException):
                log.warning("%s: cannot list models: %s", adapter.name, listed)
            else:
                models.extend(listed)
        return models

    async def _list_all(self, timeout_s: float | None = None
                        ) -> list[tuple[RuntimeAdapter, list[LoadedModel] | BaseException]]:
        results = await asyncio.gather(*(asyncio.wait_for(a.list_models(), timeout_s)
                                         for a in self.adapters), return_exceptions=True)
        for adapter, result in zip(self.adapters, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, RuntimeAdapterError):
                log.error("%s: listing models failed", adapter.name, exc_info=result)
        return list(zip(self.adapters, results, strict=True))

    async def purge(self, req: PurgeRequest, progress: PurgeProgress | None = None) -> PurgeResult:
        """Purge as ``req`` asks; ``progress`` (when given) follows along for an interrupted one."""
        progress = progress if progress is not None else PurgeProgress()
        async with self._lock:
            before = await asyncio.to_thread(self.backend.snapshot)
            selected = _selected_indices(before, req.gpu_indices)
            progress.before, progress.selected = before, selected
            outcome = progress.outcome
            listings = await self._list_all()
            for adapter, listed in listings:
                if isinstance(listed, BaseException):
                    outcome.failed(adapter.name, _list_error(adapter, listed))
                    continue
                if adapter.parallel_unload:
                    # Grace periods overlap instead of adding up; results keep listing order.
                    parts = [_Outcome() for _ in listed]
                    progress.in_flight = parts
                    await asyncio.gather(*(self._purge_model(adapter, m, req, selected, part)
                                           for m, part in zip(listed, parts, strict=True)))
                    progress.in_flight = []
                    for part in parts:
                        outcome.merge(part)
                else:
                    for model in listed:
                        await self._purge_model(adapter, model, req, selected, outcome)
            after = await self._after_snapshot(before, selected, outcome)
            return self._result(before, after, selected, outcome)

    def interrupted_result(self, progress: PurgeProgress, reason: str) -> PurgeResult:
        """The result of a started purge that did not finish (cancelled or failed), for the audit.

        Memory was not re-measured, so ``memory_after`` repeats ``memory_before``; unloads
        that had begun are named, as they may already have signalled a process.
        """
        if progress.before is None:
            raise ValueError("the purge had not started")
        outcome = _Outcome()
        outcome.merge(progress.outcome)
        for part in progress.in_flight:
            outcome.merge(part)
        outcome.errors.append(reason)
        outcome.errors += [f"interrupted while unloading {label}: it may have been signalled"
                           for label in outcome.unloading]
        result = self._result(progress.before, progress.before, progress.selected, outcome,
                              measured=False)
        return result.model_copy(update={
            "status": "partial" if outcome.actions or outcome.unloading else "error",
            "recommendation": INTERRUPTED_TEXT,
        })

    async def _purge_model(self, adapter: RuntimeAdapter, model: LoadedModel, req: PurgeRequest,
                           selected: frozenset[int], outcome: _Outcome) -> None:
        label = f"{model.name} ({adapter.name})"
        if req.gpu_indices is not None and not model.occupies(selected):
            if model.gpu_index is None and not model.gpu_indices:
                gpus = ", ".join(str(i) for i in sorted(selected))
                outcome.skipped.append(f"skipped {label}: its GPU is unknown and the purge "
                                       f"is limited to GPU {gpus}")
            return
        if model.in_use and not req.force:
            message = f"skipped {label}: {adapter.in_use_reason(model)}; use force to unload"
            outcome.errors.append(message)
            outcome.skipped.append(message)
            outcome.in_use_skipped.append(model.name)
            return
        outcome.unloading.append(label)
        try:
            action = await adapter.unload(model, force=req.force)
        except ModelGone as gone:
            outcome.unloading.remove(label)
            outcome.actions.append(str(gone))
            return
        except Exception as exc:  # an adapter bug must not stop the others either
            outcome.unloading.remove(label)
            if not isinstance(exc, RuntimeAdapterError):
                log.exception("%s: unloading %s failed", adapter.name, model.name)
            outcome.failed(adapter.name, f"could not unload {label}: {_detail(adapter, exc)}")
            return
        outcome.unloading.remove(label)
        outcome.actions.append(action)
        outcome.unloaded.append(model.name)
        outcome.spanned.update(model.gpu_indices or (
            [model.gpu_index] if model.gpu_index is not None else []))
        outcome.expected_drop_mb += model.memory_mb or 0

    async def _after_snapshot(self, before: GpuSnapshot, selected: frozenset[int],
                              outcome: _Outcome) -> GpuSnapshot:
        try:
            if not outcome.actions:
                return await asyncio.to_thread(self.backend.snapshot)
            return await self._settled(before, selected, outcome.expected_drop_mb)
        except Exception as exc:
            log.warning("re-measuring GPU memory failed: %s", exc)
            outcome.errors.append(f"could not re-measure GPU memory: {exc}")
            outcome.measure_failed = True
            return before

    async def _settled(self, before: GpuSnapshot, selected: frozenset[int],
                       expected_drop_mb: int) -> GpuSnapshot:
        """The first reading that agrees with the previous one, within ``settle_s``.

        When the unloaded models' sizes are known, agreement counts only once at
        least half of that has gone: a driver that has not started freeing yet
        reads steady too.
        """
        deadline = self._clock() + self.settle_s
        before_used = _used_mb(before, selected)
        previous = await asyncio.to_thread(self.backend.snapshot)
        while self._clock() < deadline:
            await self._sleep(self.poll_interval_s)
            current = await asyncio.to_thread(self.backend.snapshot)
            used = _used_mb(current, selected)
            steady = abs(used - _used_mb(previous, selected)) <= self.settle_tolerance_mb
            dropped = before_used - used >= expected_drop_mb / 2
            if steady and dropped:
                return current
            previous = current
        return previous

    def _result(self, before: GpuSnapshot, after: GpuSnapshot, selected: frozenset[int],
                outcome: _Outcome, *, measured: bool = True) -> PurgeResult:
        present = {g.index for g in before.gpus}
        covered = selected | frozenset(i for i in outcome.spanned if i in present)
        freed_mb = max(_used_mb(before, covered) - _used_mb(after, covered), 0)
        did_something = bool(outcome.actions) or freed_mb > 0
        holders = _holders(after, covered) if measured and not outcome.measure_failed else ""
        status = _status(outcome, did_something)
        errors = list(outcome.errors)
        if holders and status == "success":
            # memory still held is never a success, whatever was unloaded and with force or not
            # (with other errors the status is partial already and the recommendation names them)
            status = "partial"
            errors.append("GPU memory is still held after the purge: "
                          + holders.removeprefix("Still holding GPU memory: ").rstrip("."))
        return PurgeResult(
            status=status,
            timestamp=self._now(),
            actions=outcome.actions,
            memory_before=_summary(before, covered),
            memory_after=_summary(after, covered),
            memory_freed_gb=mb_to_gb(freed_mb),
            models_unloaded=outcome.unloaded,
            errors=errors,
            recommendation=_recommendation(outcome, holders),
            node=before.node,
            skipped=outcome.skipped,
            gpu_indices=sorted(covered),
            gpus=_changed(before, after, covered, self.settle_tolerance_mb),
        )


def _status(outcome: _Outcome, did_something: bool) -> Literal["success", "partial", "error"]:
    """``success``: nothing left undone; ``error``: something failed and nothing was done.

    Anything between is ``partial``, including a purge whose only outcome is models in
    use skipped without force: it did what was asked, but their memory is still held.
    """
    if not outcome.errors:
        return "success"
    failed = bool(outcome.failed_runtimes) or outcome.measure_failed
    return "error" if failed and not did_something else "partial"


def _selected_indices(snapshot: GpuSnapshot, requested: list[int] | None) -> frozenset[int]:
    present = {g.index for g in snapshot.gpus}
    if requested is None:
        return frozenset(present)
    missing = sorted(set(requested) - present)
    if missing:
        have = ", ".join(str(i) for i in sorted(present)) or "none"
        raise InvalidPurgeRequest(
            f"no GPU {', '.join(str(i) for i in missing)} on this node (GPUs: {have})"
        )
    return frozenset(requested)


def _list_error(adapter: RuntimeAdapter, exc: BaseException) -> str:
    return f"could not list models of {adapter.name}: {_detail(adapter, exc)}"


def _detail(adapter: RuntimeAdapter, exc: BaseException) -> str:
    """An adapter error without its runtime prefix; an unexpected one by type only (no internals)."""
    if not isinstance(exc, RuntimeAdapterError):
        return f"unexpected {type(exc).__name__}"
    return str(exc).removeprefix(f"{adapter.name}: ")


def _used_mb(snapshot: GpuSnapshot, selected: frozenset[int]) -> int:
    return sum(g.memory.used_mb for g in snapshot.gpus if g.index in selected)


def _summary(snapshot: GpuSnapshot, selected: frozenset[int]) -> MemorySummary:
    used = _used_mb(snapshot, selected)
    total = sum(g.memory.total_mb for g in snapshot.gpus if g.index in selected)
    return MemorySummary(used_gb=mb_to_gb(used), total_gb=mb_to_gb(total),
                         percent_used=percent(used, total))


def _holders(after: GpuSnapshot, selected: frozenset[int]) -> str:
    """The processes still holding memory on the selected GPUs, largest first."""
    procs = sorted((p for p in after.processes
                    if p.memory_mb and (p.gpu_index is None or p.gpu_index in selected)),
                   key=lambda p: p.memory_mb or 0, reverse=True)
    if not procs:
        return ""
    named = [f"{p.name}[{p.pid}] {mb_to_gb(p.memory_mb or 0)} {SIZE_UNIT}"
             + (f" on GPU {p.gpu_index}" if p.gpu_index is not None else "")
             for p in procs[:MAX_HOLDERS_NAMED]]
    more = len(procs) - MAX_HOLDERS_NAMED
    return "Still holding GPU memory: " + ", ".join(named) + (f" and {more} more" if more > 0 else "") + "."


def _changed(before: GpuSnapshot, after: GpuSnapshot, covered: frozenset[int],
             tolerance_mb: int) -> list[PurgeGpuMemory]:
    """Each GPU the figures cover, and every other GPU whose used memory moved past noise."""
    used_after = {g.index: g.memory.used_mb for g in after.gpus}
    changes = []
    for gpu in before.gpus:
        used_before = gpu.memory.used_mb
        used = used_after.get(gpu.index, used_before)
        if gpu.index in covered or abs(used_before - used) > tolerance_mb:
            changes.append(PurgeGpuMemory(index=gpu.index, used_before_gb=mb_to_gb(used_before),
                                          used_after_gb=mb_to_gb(used),
                                          freed_gb=mb_to_gb(max(used_before - used, 0))))
    return changes


def _recommendation(outcome: _Outcome, holders: str) -> str:
    if not outcome.errors:
        if not holders:
            if outcome.unloaded:
                return SUCCESS_TEXT
            return "Nothing to unload: no runtime reported a loaded model and no process holds GPU memory."
        if outcome.unloaded:
            return (f"{holders} Stop them, or configure a runtime adapter that can unload them, "
                    "to free that memory too.")
        return (f"Nothing to unload: no runtime reported a loaded model. {holders} "
                "Configure a runtime adapter for them to purge them.")
    parts = [holders] if holders else []
    if outcome.in_use_skipped:
        count = len(outcome.in_use_skipped)
        parts.append(f"{count} model{'s' if count != 1 else ''} in use skipped "
                     f"({', '.join(outcome.in_use_skipped)}); purge with force to unload "
                     f"{'them' if count != 1 else 'it'}.")
    if outcome.failed_runtimes:
        parts.append(f"Check runtime{'s' if len(outcome.failed_runtimes) != 1 else ''} "
                     f"{', '.join(outcome.failed_runtimes)}: see errors.")
    if outcome.measure_failed:
        parts.append("GPU memory could not be re-measured; check the GPU backend.")
    return " ".join(parts)

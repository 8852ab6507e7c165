"""GPU processes matching configured names or users: SIGTERM, then SIGKILL after a grace period.

Idle: a process is idle when every GPU it holds memory on is below
``idle_gpu_pct`` utilization (NVML's per-GPU figure; per-process figures are not
reliably available) and the process used less than ``idle_cpu_pct`` of one CPU
over a short window (``idle_window_s``). A GPU whose utilization is unknown
makes the process count as busy. Without force only idle processes are
signalled.

Safety: only PIDs this adapter listed are ever signalled, and only when the
backend sees them (``visible``), they still match, and psutil confirms the same
process (its create time guards against PID reuse). A simulated backend's PIDs
are made up, so against one this adapter lists nothing; it never signals its
own process or PID 1.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import psutil
from pydantic import PrivateAttr

from gpufleet.server.gpu.base import GpuBackend, GpuSnapshot
from gpufleet.server.gpu.signals import signal_refusal
from gpufleet.server.runtimes.base import ModelGone, RuntimeAdapter, RuntimeAdapterError
from gpufleet.server.schemas import GpuProcess, LoadedModel

log = logging.getLogger("gpufleet.purge")

POLL_S = 0.05
MAX_WINDOW_FACTOR = 10  # a kept CPU reading older than this many windows is stale


@dataclass(slots=True)
class _Target:
    label: str  # the listed name: a copy renamed to another process carries no target
    process: psutil.Process  # remembers the create time: signals to a reused PID fail
    gpus: frozenset[int | None]
    busy_reason: str | None


class _ListedProcess(LoadedModel):
    """A listed process that carries what its own listing saw, for the unload that follows.

    Each listing's targets travel with its models, so a status poll listing again in the
    middle of a purge cannot change what that purge decided (no shared listing state).
    """

    _target: _Target | None = PrivateAttr(default=None)


def _target_of(model: LoadedModel) -> _Target | None:
    """What ``model``'s own listing saw, or None for a model this adapter did not list."""
    target = model._target if isinstance(model, _ListedProcess) else None
    return target if target is not None and target.label == model.name else None


class ProcessAdapter(RuntimeAdapter):
    """Matching GPU processes, each listed as ``name[pid]``."""

    parallel_unload = True

    def __init__(self, backend: GpuBackend, process_names: Sequence[str] = (),
                 users: Sequence[str] = (), grace_s: float = 10.0, *, name: str = "process",
                 idle_gpu_pct: float = 5.0, idle_cpu_pct: float = 2.0,
                 idle_window_s: float = 0.5, kill_wait_s: float = 5.0,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.name = name
        self.backend = backend
        self.process_names = frozenset(process_names)
        self.users = frozenset(users)
        self.grace_s = grace_s
        self.idle_gpu_pct = idle_gpu_pct
        self.idle_cpu_pct = idle_cpu_pct
        self.idle_window_s = idle_window_s
        self.kill_wait_s = kill_wait_s
        self._sleep = sleep
        self._cpu_samples: dict[tuple[int, float], tuple[float, float]] = {}  # -> (when, cpu s)

    async def list_models(self) -> list[LoadedModel]:
        if self.backend.simulated or not (self.process_names or self.users):
            return []
        snapshot = await asyncio.to_thread(self.backend.snapshot)
        # psutil reads /proc: off the event loop, which serves status polls meanwhile.
        matched = await asyncio.to_thread(self._matching, snapshot)
        cpu = await self._cpu_percent([proc for proc, _ in matched.values()])
        utilization = {g.index: g.utilization.gpu_percent for g in snapshot.gpus}
        models: list[LoadedModel] = []
        for pid, (proc, entries) in matched.items():
            if pid not in cpu:
                continue  # exited while we watched
            gpus = frozenset(e.gpu_index for e in entries)
            reason = self._busy_reason(gpus, utilization, cpu[pid])
            label = f"{entries[0].name}[{pid}]"
            memory = [e.memory_mb for e in entries if e.memory_mb is not None]
            model = _ListedProcess(
                name=label, runtime=self.name,
                gpu_index=next(iter(gpus)) if len(gpus) == 1 else None,
                memory_mb=sum(memory) if memory else None,
                in_use=reason is not None,
            )
            model._target = _Target(label, proc, gpus, reason)
            models.append(model)
        return models

    def _matching(self, snapshot: GpuSnapshot) -> dict[int, tuple[psutil.Process, list[GpuProcess]]]:
        found: dict[int, tuple[psutil.Process, list[GpuProcess]]] = {}
        for entry in snapshot.processes:
            if entry.pid in found:
                found[entry.pid][1].append(entry)
                continue
            if signal_refusal(entry) is not None:  # the signal route's rules too
                continue
            proc = self._confirm(entry)
            if proc is not None:
                found[entry.pid] = (proc, [entry])
        return found

    def _confirm(self, entry: GpuProcess) -> psutil.Process | None:
        """The psutil process behind a GPU process entry, if it matches the configuration."""
        try:
            proc = psutil.Process(entry.pid)
            names = {entry.name, proc.name()}
            users = {entry.user, proc.username()}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        if names & self.process_names or users & self.users:
            return proc
        return None

    async def _cpu_percent(self, procs: list[psutil.Process]) -> dict[int, float]:
        """CPU use of each process over a recent window, in percent of one CPU.

        A reading kept from the last listing serves when it is between one and
        ``MAX_WINDOW_FACTOR`` windows old, so frequent listings (a status poll)
        do not wait; otherwise every process is read across one fresh window.
        """
        now = time.monotonic()
        readings = await asyncio.to_thread(_read_cpu, procs)
        out: dict[int, float] = {}
        fresh: list[psutil.Process] = []
        for pid, (proc, seconds) in readings.items():
            kept = self._cpu_samples.get(_identity(proc))
            if kept and self.idle_window_s <= now - kept[0] <= MAX_WINDOW_FACTOR * self.idle_window_s:
                out[pid] = 100.0 * (seconds - kept[1]) / (now - kept[0])
            else:
                fresh.append(proc)
        samples = {_identity(p): (now, t) for p, t in readings.values()}
        if fresh:
            await self._sleep(self.idle_window_s)
            after = time.monotonic()
            for pid, (proc, seconds) in (await asyncio.to_thread(_read_cpu, fresh)).items():
                out[pid] = 100.0 * (seconds - readings[pid][1]) / max(after - now, 1e-6)
                samples[_identity(proc)] = (after, seconds)
        self._cpu_samples = samples
        return out

    def _busy_reason(self, gpus: frozenset[int | None], utilization: dict[int, int | None],
                     cpu_pct: float) -> str | None:
        for gpu in sorted(g for g in gpus if g is not None):
            pct = utilization.get(gpu)
            if pct is None:
                return f"GPU {gpu} utilization unknown"
            if pct >= self.idle_gpu_pct:
                return f"GPU {gpu} at {pct}% utilization"
        if None in gpus:
            return "its GPU is unknown"
        if cpu_pct >= self.idle_cpu_pct:
            return f"using {cpu_pct:.0f}% of a CPU"
        return None

    def in_use_reason(self, model: LoadedModel) -> str:
        target = _target_of(model)
        return f"busy ({target.busy_reason})" if target and target.busy_reason else "in use"

    async def unload(self, model: LoadedModel, *, force: bool) -> str:
        target = _target_of(model)
        if target is None:
            raise RuntimeAdapterError(f"{self.name}: {model.name} was not listed; not signalled")
        if target.busy_reason and not force:
            raise RuntimeAdapterError(f"{self.name}: {model.name} is busy; use force to terminate")
        await self._recheck(model.name, target)
        proc = target.process
        try:
            proc.terminate()
            if await asyncio.to_thread(_wait_exit, proc, self.grace_s):
                return f"terminated {model.name} ({self.name}, SIGTERM)"
            log.warning("%s ignored SIGTERM for %gs; sending SIGKILL", model.name, self.grace_s)
            proc.kill()
        except psutil.NoSuchProcess:
            return f"terminated {model.name} ({self.name}, SIGTERM)"
        except psutil.AccessDenied:
            raise RuntimeAdapterError(
                f"{self.name}: not permitted to signal {model.name} (run as its user or root)"
            ) from None
        if await asyncio.to_thread(_wait_exit, proc, self.kill_wait_s):
            return f"killed {model.name} ({self.name}, SIGKILL after {self.grace_s:g}s grace)"
        raise RuntimeAdapterError(f"{self.name}: {model.name} still running after SIGKILL")

    async def _recheck(self, label: str, target: _Target) -> None:
        """The process is still the one listed and still a visible GPU process."""
        pid = target.process.pid
        if not await asyncio.to_thread(target.process.is_running):
            raise ModelGone(f"{label} had already exited ({self.name})")
        snapshot = await asyncio.to_thread(self.backend.snapshot)
        entries = [p for p in snapshot.processes if p.pid == pid]
        if not entries:
            raise ModelGone(f"{label} no longer holds GPU memory; left running ({self.name})")
        if not all(p.visible for p in entries):
            raise RuntimeAdapterError(f"{self.name}: {label} is no longer visible; not signalled")


def _identity(proc: psutil.Process) -> tuple[int, float]:
    """PID and create time: a reused PID is another process."""
    return proc.pid, proc.create_time()


def _read_cpu(procs: list[psutil.Process]) -> dict[int, tuple[psutil.Process, float]]:
    """Each live process's CPU seconds so far, by PID (run in a worker thread)."""
    readings = {p.pid: (p, _cpu_seconds(p)) for p in procs}
    return {pid: (p, t) for pid, (p, t) in readings.items() if t is not None}


def _cpu_seconds(proc: psutil.Process) -> float | None:
    try:
        times = proc.cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return times.user + times.system


def _wait_exit(proc: psutil.Process, timeout_s: float) -> bool:
    """Wait for ``proc`` to exit (a zombie counts as exited); reaps it when it is our child."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            proc.wait(timeout=POLL_S)
            return True
        except psutil.TimeoutExpired:
            pass
        except psutil.NoSuchProcess:
            return True
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False

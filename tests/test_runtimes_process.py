"""The process adapter on real child processes, seen as GPU processes through the fake NVML."""

from __future__ import annotations

import asyncio
import getpass
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest

from gpufleet.server.config import RuntimeSettings
from gpufleet.server.gpu.base import GpuBackend, GpuSnapshot
from gpufleet.server.gpu.nvml import NvmlBackend
from gpufleet.server.runtimes import ModelGone, ProcessAdapter, RuntimeAdapterError, build_adapters
from tests.fakes.pynvml import FakeGpu, FakeProcess

GONE_PID = 99_999_999  # above any pid_max: a PID of another container, invisible here

SLEEPER = "import time; print('ready', flush=True); time.sleep(60)"
STUBBORN = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)")


@pytest.fixture
def spawn() -> Iterator:
    """Start Python children that report ready once their handlers are set; kill leftovers."""
    children: list[subprocess.Popen] = []

    def _spawn(code: str = SLEEPER) -> subprocess.Popen:
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        children.append(child)
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        return child

    yield _spawn
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)
        if child.stdout:
            child.stdout.close()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _node(fake_nvml, *procs: tuple[int, int], util_gpu: int = 0, gpu: int = 0) -> NvmlBackend:
    """A node whose GPU ``gpu`` runs the given (pid, MiB) processes."""
    gpus = [FakeGpu(uuid=f"GPU-{i}") for i in range(gpu + 1)]
    gpus[gpu].compute_processes = [FakeProcess(pid, mib) for pid, mib in procs]
    gpus[gpu].used_mib = sum(mib for _, mib in procs)
    gpus[gpu].util_gpu = util_gpu
    fake_nvml.configure(gpus)
    return NvmlBackend(nvml_module=fake_nvml)


def _name(pid: int) -> str:
    return psutil.Process(pid).name()


def _adapter(backend: GpuBackend, pid: int, **kw) -> ProcessAdapter:
    kw.setdefault("idle_window_s", 0.1)
    return ProcessAdapter(backend, [_name(pid)], **kw)


async def test_idle_matching_process_is_listed_and_terminated(fake_nvml, spawn):
    child = spawn()
    adapter = _adapter(_node(fake_nvml, (child.pid, 20480), gpu=1), child.pid)
    (model,) = await adapter.list_models()
    assert model.name == f"{_name(child.pid)}[{child.pid}]"
    assert (model.runtime, model.gpu_index, model.memory_mb, model.in_use) == ("process", 1, 20480, False)
    action = await adapter.unload(model, force=False)
    assert action == f"terminated {model.name} (process, SIGTERM)"
    assert _gone(child.pid)


async def test_process_ignoring_sigterm_is_killed_after_the_grace_period(fake_nvml, spawn):
    child = spawn(STUBBORN)
    adapter = _adapter(_node(fake_nvml, (child.pid, 8192)), child.pid, grace_s=0.3)
    (model,) = await adapter.list_models()
    action = await adapter.unload(model, force=False)
    assert action == f"killed {model.name} (process, SIGKILL after 0.3s grace)"
    assert _gone(child.pid)


async def test_busy_gpu_makes_the_process_in_use_and_only_force_signals_it(fake_nvml, spawn):
    child = spawn()
    adapter = _adapter(_node(fake_nvml, (child.pid, 8192), util_gpu=80), child.pid)
    (model,) = await adapter.list_models()
    assert model.in_use is True
    assert adapter.in_use_reason(model) == "busy (GPU 0 at 80% utilization)"
    with pytest.raises(RuntimeAdapterError, match="busy; use force"):
        await adapter.unload(model, force=False)
    assert child.poll() is None  # untouched
    assert "SIGTERM" in await adapter.unload(model, force=True)
    assert _gone(child.pid)


async def test_busy_cpu_makes_the_process_in_use(fake_nvml, spawn):
    spinner = spawn("import time\nprint('ready', flush=True)\nend = time.time() + 30\n"
                    "while time.time() < end: pass")
    adapter = _adapter(_node(fake_nvml, (spinner.pid, 4096)), spinner.pid, idle_window_s=0.3)
    (model,) = await adapter.list_models()
    assert model.in_use is True
    assert adapter.in_use_reason(model).startswith("busy (using ")


async def test_a_recent_cpu_reading_spares_the_next_listing_its_wait(fake_nvml, spawn):
    child = spawn()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(seconds)

    adapter = _adapter(_node(fake_nvml, (child.pid, 4096)), child.pid, idle_window_s=0.1,
                       sleep=sleep)
    (first,) = await adapter.list_models()
    assert waits == [0.1]  # a new process is watched over one window
    await asyncio.sleep(0.15)  # the console's next poll, a little later
    (second,) = await adapter.list_models()
    assert waits == [0.1]  # measured against the kept reading instead
    assert first.in_use is second.in_use is False


async def test_only_matching_visible_processes_are_listed(fake_nvml, spawn):
    target, bystander = spawn(), spawn()
    backend = _node(fake_nvml, (target.pid, 4096), (bystander.pid, 4096), (GONE_PID, 4096))
    by_name = ProcessAdapter(backend, ["no-such-process"], idle_window_s=0.1)
    assert await by_name.list_models() == []
    by_user = ProcessAdapter(backend, users=[getpass.getuser()], idle_window_s=0.1)
    names = {m.name for m in await by_user.list_models()}
    # The invisible PID matches nothing: its name and user cannot be confirmed.
    assert names == {f"{_name(p.pid)}[{p.pid}]" for p in (target, bystander)}
    assert await ProcessAdapter(backend, idle_window_s=0.1).list_models() == []  # nothing configured


async def test_unlisted_model_is_never_signalled(fake_nvml, spawn):
    child = spawn()
    adapter = _adapter(_node(fake_nvml, (child.pid, 4096)), child.pid)
    (model,) = await adapter.list_models()
    forged = model.model_copy(update={"name": f"python[{child.pid + 1}]"})
    with pytest.raises(RuntimeAdapterError, match="was not listed; not signalled"):
        await adapter.unload(forged, force=True)
    assert child.poll() is None


async def test_process_that_exited_after_listing_is_gone_not_an_error(fake_nvml, spawn):
    child = spawn()
    adapter = _adapter(_node(fake_nvml, (child.pid, 4096)), child.pid)
    (model,) = await adapter.list_models()
    child.kill()
    child.wait(timeout=10)
    with pytest.raises(ModelGone, match="had already exited"):
        await adapter.unload(model, force=True)


class _SimulatedNode(GpuBackend):
    simulated = True

    def snapshot(self) -> GpuSnapshot:
        raise AssertionError("a simulated node's PIDs must not even be read")


async def test_simulated_backend_pids_are_never_candidates():
    adapter = ProcessAdapter(_SimulatedNode(), ["python"], users=[getpass.getuser()])
    assert await adapter.list_models() == []
    settings = [RuntimeSettings(type="process", process_names=["python"])]
    assert build_adapters(settings, _SimulatedNode()) == []


async def test_a_listing_during_a_purge_does_not_change_what_the_purge_decided(fake_nvml, spawn):
    child = spawn()
    gpu = FakeGpu(uuid="GPU-0", used_mib=4096)
    gpu.compute_processes = [FakeProcess(child.pid, 4096)]
    fake_nvml.configure([gpu])
    adapter = _adapter(NvmlBackend(nvml_module=fake_nvml), child.pid)
    (purged,) = await adapter.list_models()  # the purge's listing: idle
    assert purged.in_use is False
    gpu.util_gpu = 80
    (polled,) = await adapter.list_models()  # a status poll lists again before the unload
    assert polled.in_use is True and adapter.in_use_reason(polled).startswith("busy (GPU 0")
    assert adapter.in_use_reason(purged) == "in use"  # the purge's record is its own
    action = await adapter.unload(purged, force=False)  # decided on its own listing
    assert action == f"terminated {purged.name} (process, SIGTERM)"
    assert _gone(child.pid)


async def test_listing_reads_proc_off_the_event_loop(fake_nvml, spawn, monkeypatch):
    import threading

    child = spawn()
    adapter = _adapter(_node(fake_nvml, (child.pid, 4096)), child.pid)
    loop_thread = threading.get_ident()
    reads: list[bool] = []
    real_process = psutil.Process

    def recording_process(pid: int) -> psutil.Process:
        reads.append(threading.get_ident() == loop_thread)
        return real_process(pid)

    monkeypatch.setattr("gpufleet.server.runtimes.process.psutil.Process", recording_process)
    (model,) = await adapter.list_models()
    assert model.name.endswith(f"[{child.pid}]")
    assert reads and not any(reads), "psutil ran on the event loop"

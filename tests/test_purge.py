"""PurgeService: skips, force, failing adapters, GPU selection, settling and recommendations."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

import psutil
import pytest

from gpufleet.server.config import RuntimeSettings
from gpufleet.server.gpu.base import GpuBackend, GpuSnapshot
from gpufleet.server.gpu.simulated import SimulatedBackend
from gpufleet.server.purge import SUCCESS_TEXT, InvalidPurgeRequest, PurgeService
from gpufleet.server.runtimes import (
    OllamaAdapter,
    ProcessAdapter,
    RuntimeAdapter,
    RuntimeAdapterError,
    SimulatedAdapter,
    TritonAdapter,
    build_adapters,
)
from gpufleet.server.schemas import (
    GpuInfo,
    GpuMemory,
    GpuProcess,
    GpuUtilization,
    LoadedModel,
    NodeInfo,
    PurgeRequest,
)
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.triton_server import FakeTriton

TOTAL_MB = 81920
NODE = NodeInfo(hostname="test-node", simulated=False, backend="nvml")


def _snapshot(used_mb: dict[int, int], processes: Sequence[GpuProcess] = ()) -> GpuSnapshot:
    gpus = tuple(
        GpuInfo(index=i, name="NVIDIA A100 80GB", memory=GpuMemory.from_mb(TOTAL_MB, used),
                utilization=GpuUtilization(gpu_percent=0, memory_percent=0))
        for i, used in sorted(used_mb.items())
    )
    return GpuSnapshot(taken_at=datetime.now(UTC), node=NODE, gpus=gpus,
                       processes=tuple(processes))


class LiveNode(GpuBackend):
    """A node whose driver readings are computed on every snapshot from the test's state."""

    def __init__(self, read: Callable[[], GpuSnapshot]) -> None:
        self.read = read
        self.calls = 0

    def snapshot(self) -> GpuSnapshot:
        self.calls += 1
        return self.read()


class ScriptedNode(GpuBackend):
    """Readings taken from a script, the last one repeating."""

    def __init__(self, used_mb_sequence: Sequence[int]) -> None:
        self.sequence = list(used_mb_sequence)
        self.calls = 0

    def snapshot(self) -> GpuSnapshot:
        used = self.sequence[min(self.calls, len(self.sequence) - 1)]
        self.calls += 1
        return _snapshot({0: used})


class FakeTime:
    """A monotonic clock that only moves when the service sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class StubAdapter(RuntimeAdapter):
    """An in-process runtime: models it holds, an optional failure, a record of unloads."""

    def __init__(self, name: str, models: list[LoadedModel], *, list_error: Exception | None = None,
                 unload_errors: dict[str, Exception] | None = None) -> None:
        self.name = name
        self.models = {m.name: m for m in models}
        self.list_error = list_error
        self.unload_errors = unload_errors or {}
        self.unloaded: list[tuple[str, bool]] = []

    async def list_models(self) -> list[LoadedModel]:
        if self.list_error:
            raise self.list_error
        return list(self.models.values())

    async def unload(self, model: LoadedModel, *, force: bool) -> str:
        if model.name in self.unload_errors:
            raise self.unload_errors[model.name]
        self.unloaded.append((model.name, force))
        del self.models[model.name]
        return f"unloaded {model.name} ({self.name})"

    def used_mb(self, gpu: int) -> int:
        return sum(m.memory_mb or 0 for m in self.models.values() if m.gpu_index in (gpu, None))


def _service(backend: GpuBackend, adapters: Sequence[RuntimeAdapter], **kw) -> PurgeService:
    kw.setdefault("settle_s", 2.0)
    kw.setdefault("poll_interval_s", 0.01)
    return PurgeService(backend, adapters, **kw)


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def runtimes() -> Iterator[tuple[FakeOllama, FakeTriton]]:
    """Ollama with an idle and a pinned model, Triton with an idle and a busy one."""
    with FakeOllama() as ollama, FakeTriton() as triton:
        ollama.load("qwen-3.5-27b", 20480)
        ollama.pin("llama3.2", 4096)
        triton.load("resnet50", 2048)
        triton.load("bert", 1024, busy=True)
        yield ollama, triton


def _node_over(ollama: FakeOllama, triton: FakeTriton, *, base_mb: int = 2150) -> LiveNode:
    """GPU 0's used memory: what the runtimes hold now, plus the driver's own share."""
    sizes = {"qwen-3.5-27b": 20480, "llama3.2": 4096, "resnet50": 2048, "bert": 1024}
    return LiveNode(lambda: _snapshot(
        {0: base_mb + sum(sizes[n] for n in ollama.loaded + triton.ready)}))


def _adapters(ollama: FakeOllama, triton: FakeTriton) -> list[RuntimeAdapter]:
    return [OllamaAdapter(ollama.url, 2.0), TritonAdapter(triton.url, 2.0)]


async def test_without_force_models_in_use_are_skipped_and_listed(runtimes):
    ollama, triton = runtimes
    service = _service(_node_over(ollama, triton), _adapters(ollama, triton))
    result = await service.purge(PurgeRequest())
    assert result.models_unloaded == ["qwen-3.5-27b", "resnet50"]
    assert result.actions == ["unloaded qwen-3.5-27b (ollama)", "unloaded resnet50 (triton)"]
    assert result.errors[0] == ("skipped llama3.2 (ollama): pinned in memory (keep_alive); "
                                "use force to unload")
    assert result.errors[1].startswith("skipped bert (triton): in use (ran an inference ")
    assert result.errors[1].endswith("; use force to unload")
    assert result.skipped == result.errors
    assert result.status == "partial"
    assert sorted(ollama.loaded + triton.ready) == ["bert", "llama3.2"]
    assert (result.memory_before.used_gb, result.memory_after.used_gb) == (29.1, 7.1)
    assert result.memory_freed_gb == 22.0
    assert result.recommendation == ("2 models in use skipped (llama3.2, bert); "
                                     "purge with force to unload them.")


async def test_force_unloads_models_in_use_too(runtimes):
    ollama, triton = runtimes
    service = _service(_node_over(ollama, triton), _adapters(ollama, triton))
    result = await service.purge(PurgeRequest(force=True))
    assert result.status == "success" and result.errors == [] and result.skipped == []
    assert result.models_unloaded == ["qwen-3.5-27b", "llama3.2", "resnet50", "bert"]
    assert ollama.loaded == [] and triton.ready == []
    assert result.memory_after.model_dump() == {"used_gb": 2.1, "total_gb": 80.0, "percent_used": 2.6}
    assert result.memory_freed_gb == 27.0
    assert result.recommendation == SUCCESS_TEXT
    assert "cleared CUDA cache" not in result.actions  # nothing here does that
    assert result.node == NODE


async def test_an_unreachable_adapter_is_listed_and_the_others_still_run(runtimes):
    ollama, triton = runtimes
    adapters = [OllamaAdapter(_closed_port_url(), 1.0), TritonAdapter(triton.url, 2.0)]
    result = await _service(_node_over(ollama, triton), adapters).purge(PurgeRequest(force=True))
    assert result.models_unloaded == ["resnet50", "bert"]
    (error,) = result.errors
    assert error.startswith("could not list models of ollama: cannot reach http://127.0.0.1:")
    assert result.status == "partial"
    assert result.recommendation == "Check runtime ollama: see errors."


async def test_a_failing_unload_is_listed_and_the_rest_still_go(runtimes):
    ollama, triton = runtimes
    ollama.fail_unload("qwen-3.5-27b", 500, "llama runner process has terminated")
    result = await _service(_node_over(ollama, triton), _adapters(ollama, triton)).purge(
        PurgeRequest(force=True))
    assert result.models_unloaded == ["llama3.2", "resnet50", "bert"]
    assert result.errors == ["could not unload qwen-3.5-27b (ollama): POST /api/generate "
                             "answered 500: llama runner process has terminated"]
    assert result.status == "partial"


async def test_only_skips_without_force_is_partial_not_error():
    busy = LoadedModel(name="llama3.2", runtime="sim", gpu_index=0, memory_mb=4096, in_use=True)
    stub = StubAdapter("sim", [busy])
    node = LiveNode(lambda: _snapshot({0: 1000 + stub.used_mb(0)}, [
        GpuProcess(pid=31, name="ollama", memory_mb=4096, gpu_index=0)]))
    result = await _service(node, [stub]).purge(PurgeRequest())
    assert result.status == "partial"  # it did what was asked; the memory is still held
    assert result.errors == result.skipped == ["skipped llama3.2 (sim): in use; use force to unload"]
    assert result.actions == [] and result.models_unloaded == [] and result.memory_freed_gb == 0.0
    assert result.recommendation == ("Still holding GPU memory: ollama[31] 4.0 GB on GPU 0. "
                                     "1 model in use skipped (llama3.2); purge with force to "
                                     "unload it.")
    assert "GiB" not in result.recommendation and "MiB" not in result.recommendation
    # A skip beside a failure that left nothing done is still an error.
    broken = StubAdapter("triton", [], list_error=RuntimeAdapterError("triton: timed out"))
    failed = await _service(node, [stub, broken]).purge(PurgeRequest())
    assert failed.status == "error"


async def test_nothing_done_and_errors_is_status_error():
    broken = StubAdapter("ollama", [], list_error=RuntimeAdapterError("ollama: cannot reach x"))
    result = await _service(LiveNode(lambda: _snapshot({0: 30000})), [broken]).purge(PurgeRequest())
    assert result.status == "error"
    assert result.actions == [] and result.models_unloaded == []
    assert result.memory_freed_gb == 0.0
    assert result.errors == ["could not list models of ollama: cannot reach x"]


async def test_an_adapter_bug_is_reported_without_internals_and_others_run():
    buggy = StubAdapter("triton", [LoadedModel(name="m1", runtime="triton", memory_mb=1024)],
                        unload_errors={"m1": ValueError("secret internal state")})
    fine = StubAdapter("ollama", [LoadedModel(name="m2", runtime="ollama", memory_mb=1024)])
    node = LiveNode(lambda: _snapshot({0: 1000 + buggy.used_mb(0) + fine.used_mb(0)}))
    result = await _service(node, [buggy, fine]).purge(PurgeRequest())
    assert result.errors == ["could not unload m1 (triton): unexpected ValueError"]
    assert result.models_unloaded == ["m2"]
    assert "secret" not in result.model_dump_json()


async def test_gpu_indices_limit_the_purge_and_the_memory_figures():
    stub = StubAdapter("sim", [
        LoadedModel(name="on-0", runtime="sim", gpu_index=0, memory_mb=10240),
        LoadedModel(name="on-1", runtime="sim", gpu_index=1, memory_mb=20480),
        LoadedModel(name="somewhere", runtime="sim", gpu_index=None, memory_mb=1024),
    ])
    node = LiveNode(lambda: _snapshot({0: 1000 + stub.used_mb(0), 1: 500 + stub.used_mb(1)}))
    result = await _service(node, [stub]).purge(PurgeRequest(gpu_indices=[1]))
    assert result.models_unloaded == ["on-1"]
    assert result.skipped == ["skipped somewhere (sim): its GPU is unknown and the purge "
                              "is limited to GPU 1"]
    assert result.errors == [] and result.status == "success"
    assert result.memory_before.model_dump() == {"used_gb": 21.5, "total_gb": 80.0, "percent_used": 26.9}
    assert result.memory_after.used_gb == 1.5
    assert result.memory_freed_gb == 20.0
    with pytest.raises(InvalidPurgeRequest, match=r"no GPU 7 on this node \(GPUs: 0, 1\)"):
        await _service(node, [stub]).purge(PurgeRequest(gpu_indices=[7]))


async def test_recommendation_names_what_still_holds_memory():
    holders = [GpuProcess(pid=4242, name="python", memory_mb=20480, gpu_index=0),
               GpuProcess(pid=777, name="vllm", memory_mb=8192, gpu_index=1)]
    node = LiveNode(lambda: _snapshot({0: 22000, 1: 9000}, holders))
    broken = StubAdapter("triton", [], list_error=RuntimeAdapterError("triton: timed out"))
    result = await _service(node, [broken]).purge(PurgeRequest())
    assert result.recommendation == ("Still holding GPU memory: python[4242] 20.0 GB on GPU 0, "
                                     "vllm[777] 8.0 GB on GPU 1. Check runtime triton: see errors.")
    limited = await _service(node, [broken]).purge(PurgeRequest(gpu_indices=[1]))
    assert limited.recommendation.startswith("Still holding GPU memory: vllm[777] 8.0 GB on GPU 1.")


async def test_nothing_loaded_says_so_instead_of_claiming_success():
    node = LiveNode(lambda: _snapshot({0: 22000}, [GpuProcess(pid=4242, name="python",
                                                              memory_mb=20480, gpu_index=0)]))
    result = await _service(node, [StubAdapter("ollama", [])]).purge(PurgeRequest())
    # memory still held is never a success: partial, the holder named
    assert result.status == "partial" and result.actions == []
    assert result.errors == ["GPU memory is still held after the purge: python[4242] 20.0 GB on GPU 0"]
    assert result.recommendation == (
        "Nothing to unload: no runtime reported a loaded model. Still holding GPU memory: "
        "python[4242] 20.0 GB on GPU 0. Configure a runtime adapter for them to purge them.")
    assert node.calls == 2  # before and after; nothing to wait for


async def test_after_memory_is_read_once_it_settles():
    stub = StubAdapter("ollama", [LoadedModel(name="qwen", runtime="ollama", memory_mb=37900)])
    # before; then the driver has not started freeing, is freeing, and has settled.
    node = ScriptedNode([40000, 40000, 40000, 30000, 2100, 2100, 0])
    time = FakeTime()
    service = _service(node, [stub], settle_s=5.0, poll_interval_s=0.25,
                       clock=time.clock, sleep=time.sleep)
    result = await service.purge(PurgeRequest())
    assert node.calls == 6  # stopped at the first two agreeing readings after the drop
    assert result.memory_after.used_gb == 2.1
    assert result.memory_freed_gb == 37.0
    assert time.sleeps == [0.25] * 4


async def test_settling_is_bounded_by_settle_s():
    stub = StubAdapter("ollama", [LoadedModel(name="qwen", runtime="ollama", memory_mb=1000)])
    node = ScriptedNode([40000] + [30000, 20000] * 50)  # never agrees with itself
    time = FakeTime()
    service = _service(node, [stub], settle_s=1.0, poll_interval_s=0.25,
                       clock=time.clock, sleep=time.sleep)
    result = await service.purge(PurgeRequest())
    assert time.now == 1.0 and len(time.sleeps) == 4
    assert node.calls == 1 + 1 + 4
    assert result.memory_after.used_gb == 29.3  # the last reading: 30000 MiB


async def test_a_failing_after_reading_is_an_error_not_a_crash():
    stub = StubAdapter("ollama", [LoadedModel(name="qwen", runtime="ollama", memory_mb=1000)])

    class FailsAfterFirst(ScriptedNode):
        def snapshot(self) -> GpuSnapshot:
            if self.calls:
                raise RuntimeError("NVML: GPU is lost")
            return super().snapshot()

    result = await _service(FailsAfterFirst([30000]), [stub]).purge(PurgeRequest())
    assert result.status == "partial" and result.models_unloaded == ["qwen"]
    assert result.errors == ["could not re-measure GPU memory: NVML: GPU is lost"]
    assert result.recommendation == "GPU memory could not be re-measured; check the GPU backend."


async def test_loaded_models_from_every_adapter_despite_one_failing(runtimes, caplog):
    ollama, triton = runtimes
    adapters = [OllamaAdapter(ollama.url, 2.0), OllamaAdapter(_closed_port_url(), 1.0, name="other"),
                TritonAdapter(triton.url, 2.0)]
    models = await _service(_node_over(ollama, triton), adapters).loaded_models()
    assert sorted(m.name for m in models) == ["bert", "llama3.2", "qwen-3.5-27b", "resnet50"]
    assert "other: cannot list models" in caplog.text


async def test_simulated_node_purge_through_build_adapters(fixed_clock):
    backend = SimulatedBackend(clock=fixed_clock)
    adapters = build_adapters([], backend)
    assert [type(a) for a in adapters] == [SimulatedAdapter]
    service = _service(backend, adapters)
    loaded = await service.loaded_models()
    assert loaded
    result = await service.purge(PurgeRequest(force=True))
    assert sorted(result.models_unloaded) == sorted(m.name for m in loaded)
    # the simulated node's last GPU holds memory of a process no runtime manages: not a success
    assert result.status == "partial" and result.recommendation != SUCCESS_TEXT
    assert "unknown[" in result.recommendation and "unknown[" in result.errors[-1]
    assert result.memory_freed_gb > 0
    assert result.memory_after.used_gb < result.memory_before.used_gb
    assert await service.loaded_models() == []


def test_build_adapters_orders_servers_before_processes():
    node = LiveNode(lambda: _snapshot({0: 0}))
    adapters = build_adapters([
        RuntimeSettings(type="process", process_names=["python"], grace_s=3),
        RuntimeSettings(type="ollama", url="http://127.0.0.1:11434"),
        RuntimeSettings(type="triton", name="triton-a", url="http://127.0.0.1:8000"),
    ], node)
    assert [(type(a).__name__, a.name) for a in adapters] == [
        ("OllamaAdapter", "ollama"), ("TritonAdapter", "triton-a"), ("ProcessAdapter", "process")]
    with pytest.raises(ValueError, match="needs a url"):
        build_adapters([RuntimeSettings(type="ollama")], node)


async def test_process_purge_on_a_real_child_frees_its_memory():
    child = subprocess.Popen([sys.executable, "-c",
                              "import time; print('ready', flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        name = psutil.Process(child.pid).name()

        def read() -> GpuSnapshot:
            # The driver frees a process's memory when it exits (a zombie holds none).
            alive = child.poll() is None and psutil.pid_exists(child.pid) and \
                psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE
            procs = [GpuProcess(pid=child.pid, name=name, memory_mb=20480, gpu_index=0,
                                user=psutil.Process().username())] if alive else []
            return _snapshot({0: 2150 + (20480 if alive else 0)}, procs)

        node = LiveNode(read)
        adapter = ProcessAdapter(node, [name], grace_s=5.0, idle_window_s=0.1)
        result = await _service(node, [adapter]).purge(PurgeRequest())
        assert result.actions == [f"terminated {name}[{child.pid}] (process, SIGTERM)"]
        assert result.models_unloaded == [f"{name}[{child.pid}]"]
        assert result.memory_freed_gb == 20.0 and result.status == "success"
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)
        child.stdout.close()


async def test_a_hanging_adapter_does_not_hide_the_others_from_loaded_models(caplog):
    class Hanging(StubAdapter):
        async def list_models(self) -> list[LoadedModel]:
            await asyncio.Event().wait()  # a runtime that accepted the connection and went quiet
            return []

    fine = StubAdapter("ollama", [LoadedModel(name="qwen", runtime="ollama")])
    service = _service(LiveNode(lambda: _snapshot({0: 0})), [Hanging("triton", []), fine])
    assert [m.name for m in await service.loaded_models(timeout_s=0.05)] == ["qwen"]
    assert "triton: listing models took over 0.05s" in caplog.text


async def test_processes_are_signalled_together_and_reported_in_order():
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)")
    children = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
                for _ in range(3)]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        name = psutil.Process(children[0].pid).name()
        procs = [GpuProcess(pid=c.pid, name=name, memory_mb=1024, gpu_index=0) for c in children]
        node = LiveNode(lambda: _snapshot({0: 3072}, procs))
        adapter = ProcessAdapter(node, [name], grace_s=0.2, idle_window_s=0.1)
        result = await _service(node, [adapter], settle_s=0.1).purge(PurgeRequest())
        assert result.actions == [f"killed {name}[{c.pid}] (process, SIGKILL after 0.2s grace)"
                                  for c in children]
        assert all(c.wait(timeout=10) is not None for c in children)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=10)
            child.stdout.close()


async def test_a_purge_limited_to_any_gpu_of_a_sharded_model_unloads_it() -> None:
    """A model spread over GPUs 6 and 7 is unloaded by a purge limited to GPU 7 alone."""
    backend = SimulatedBackend("dgx-h100-01")
    sharded = [m for m in backend.loaded_models() if m.name == "qwen-3.5-27b"]
    assert sharded and sharded[0].gpu_indices == [6, 7]
    service = PurgeService(backend, [SimulatedAdapter(backend)], settle_s=0.0)
    result = await service.purge(PurgeRequest(force=True, gpu_indices=[7]))
    assert result.models_unloaded == ["qwen-3.5-27b"]
    assert "qwen-3.5-27b" not in {m.name for m in backend.loaded_models()}


def _held(used_mb: dict[int, int], holders: Sequence[GpuProcess]) -> LiveNode:
    return LiveNode(lambda: _snapshot(used_mb, holders))


@pytest.mark.parametrize("force", [False, True])
async def test_memory_still_held_after_unloading_is_partial_with_the_holders_named(force: bool) -> None:
    stub = StubAdapter("sim", [LoadedModel(name="m", runtime="sim", gpu_index=1, memory_mb=10240)])
    unmanaged = GpuProcess(pid=4242, name="python", memory_mb=1946, gpu_index=1)
    node = LiveNode(lambda: _snapshot({0: 0, 1: 2000 + stub.used_mb(1)}, [unmanaged]))
    result = await _service(node, [stub]).purge(PurgeRequest(force=force, gpu_indices=[1]))
    assert result.models_unloaded == ["m"]
    assert result.status == "partial"
    assert result.recommendation != SUCCESS_TEXT
    assert "python[4242] 1.9 GB on GPU 1" in result.recommendation
    assert result.errors == ["GPU memory is still held after the purge: python[4242] 1.9 GB on GPU 1"]


async def test_a_model_spanning_other_gpus_is_reported_on_every_gpu_it_freed() -> None:
    """A force purge of GPU 3 unloads a model sharded over 0-3: all four are in the result."""
    stub = StubAdapter("sim", [
        LoadedModel(name="big", runtime="sim", gpu_index=0, gpu_indices=[0, 1, 2, 3], memory_mb=4 * 74_000),
        LoadedModel(name="small", runtime="sim", gpu_index=5, memory_mb=8000)])

    def read() -> GpuSnapshot:
        big = 74_000 if "big" in stub.models else 0
        small = 8000 if "small" in stub.models else 0
        return _snapshot({0: 500 + big, 1: 500 + big, 2: 500 + big, 3: 500 + big, 4: 500, 5: 500 + small})

    result = await _service(LiveNode(read), [stub]).purge(PurgeRequest(force=True, gpu_indices=[3]))
    assert result.models_unloaded == ["big"] and result.status == "success"
    assert result.gpu_indices == [0, 1, 2, 3]
    assert result.memory_freed_gb == round(4 * 74_000 / 1024, 1)  # 289.1, not one GPU's 72.3
    assert [(g.index, g.freed_gb) for g in result.gpus] == [(i, 72.3) for i in range(4)]

"""NvmlBackend's issue-14 reads on the fake pynvml: health, old drivers, XIDs, real machines' quirks."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from gpufleet.server.gpu.nvml import NvmlBackend
from gpufleet.server.gpu.nvml_watch import NvmlWatcher
from gpufleet.server.schemas import GpuStatusResponse
from tests.fakes.pynvml import DRIVER_R418, DRIVER_R470, FakeGpu, FakeProcess

WAIT_S = 10.0  # an upper bound for a background thread's answer, never a sleep


def _a100(i: int, **kw) -> FakeGpu:
    return FakeGpu(name="NVIDIA A100-SXM4-80GB", uuid=f"GPU-a100-{i}", **kw)


def _geforce(i: int, **kw) -> FakeGpu:
    """A desktop card: no ECC, no row remapping, no XID events, no MIG."""
    return FakeGpu(name="NVIDIA GeForce RTX 4090", uuid=f"GPU-4090-{i}", mig_mode=None,
                   remapped_rows=None, xid_events=False, not_supported={
                       "nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetRetiredPagesPendingStatus"},
                   **kw)


@pytest.fixture
def open_backend(fake_nvml) -> Iterator[Callable[..., NvmlBackend]]:
    """NvmlBackend on the fake, closed (watcher thread joined) at the end of the test."""
    opened: list[NvmlBackend] = []

    def open_(**kw) -> NvmlBackend:
        kw.setdefault("watcher", lambda nvml, handles: NvmlWatcher(nvml, handles,
                                                                   event_wait_ms=20))
        backend = NvmlBackend(nvml_module=fake_nvml, **kw)
        opened.append(backend)
        return backend

    yield open_
    for backend in opened:
        backend.close()


@pytest.fixture
def sleeper() -> Iterator[Callable[[], subprocess.Popen]]:
    """Real child processes that wait on stdin; killed and reaped at the end."""
    children: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                 stdin=subprocess.PIPE)
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()
        child.wait()


# ---------------------------------------------------------------- health in NVML units
def test_health_fields_in_nvml_units(fake_nvml, open_backend):
    fake_nvml.configure([_a100(
        0, clocks_event_reasons=0x4 | 0x20 | 0x1000, ecc_volatile=(12, 1), ecc_aggregate=(300, 2),
        remapped_rows=(3, 1, 1, 0), pcie_tx_kb_s=150_000, pcie_rx_kb_s=2_400_000,
        pcie_link=(3, 8), pcie_max_link=(4, 16), encoder_util=17, decoder_util=42)])
    gpu = open_backend().snapshot().gpus[0]
    assert gpu.throttle_reasons == ["sw_power_cap", "sw_thermal_slowdown", "unknown_0x1000"]
    assert gpu.throttling
    assert gpu.ecc_errors.model_dump() == {"volatile_corrected": 12, "volatile_uncorrected": 1,
                                           "aggregate_corrected": 300, "aggregate_uncorrected": 2}
    assert gpu.remapped_rows.model_dump() == {"correctable": 3, "uncorrectable": 1,
                                              "pending": True, "failed": False}
    assert gpu.retired_pages is None  # an A100 remaps rows instead
    assert gpu.pcie.model_dump() == {"tx_kb_s": 150_000, "rx_kb_s": 2_400_000, "link_gen": 3,
                                     "link_width": 8, "max_link_gen": 4, "max_link_width": 16}
    assert (gpu.utilization.encoder_percent, gpu.utilization.decoder_percent) == (17, 42)
    assert gpu.xid_errors == [] and gpu.xid_error_count == 0


def test_pre_ampere_gpus_retire_pages(fake_nvml, open_backend):
    fake_nvml.configure([FakeGpu(name="Tesla V100-SXM2-32GB", remapped_rows=None,
                                 retired_pages_sbe=[0x1000, 0x2000], retired_pages_dbe=[0x3000],
                                 retired_pages_pending=True)],
                        missing_functions={"nvmlDeviceGetRemappedRows"})
    gpu = open_backend().snapshot().gpus[0]
    assert gpu.retired_pages.model_dump() == {"single_bit_ecc": 2, "double_bit_ecc": 1,
                                              "pending": True}
    assert gpu.remapped_rows is None
    assert gpu.health_problems() == ["page retirement pending: reset the GPU"]


def test_unsupported_health_is_none_one_info_line_and_not_asked_again(fake_nvml, open_backend,
                                                                     caplog):
    fake_nvml.configure([_geforce(0), _a100(1)])
    backend = open_backend()
    with caplog.at_level(logging.INFO, logger="gpufleet.gpu"):
        first = backend.snapshot()
        asked = fake_nvml.calls["nvmlDeviceGetTotalEccErrors"]
        for _ in range(3):
            backend.snapshot()
    desk = first.gpus[0]
    assert (desk.ecc_errors, desk.remapped_rows, desk.retired_pages) == (None, None, None)
    assert desk.xid_errors is None and desk.xid_error_count is None
    assert desk.mig_mode is None and desk.health_problems() == []
    assert first.gpus[1].ecc_errors is not None and first.gpus[1].xid_errors == []
    lines = [r for r in caplog.records if "does not report" in r.getMessage()]
    assert [r.getMessage() for r in lines] == [
        "GPU 0 (NVIDIA GeForce RTX 4090) does not report: xid_errors, ecc_errors, retired_pages, "
        "remapped_rows",
        "GPU 1 (NVIDIA A100-SXM4-80GB) does not report: retired_pages",
    ]
    assert all(r.levelno == logging.INFO for r in lines)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert first.warnings == ()  # normal absences are not warnings
    # the GeForce was asked once; the A100 answers four counters every snapshot
    assert (asked, fake_nvml.calls["nvmlDeviceGetTotalEccErrors"]) == (1 + 4, 1 + 4 * 4)


def test_mig_not_supported_is_silent(fake_nvml, open_backend, caplog):
    fake_nvml.configure([_a100(i, mig_mode=None) for i in range(8)])
    with caplog.at_level(logging.DEBUG, logger="gpufleet.gpu"):
        snap = open_backend().snapshot()
    assert all(g.mig_mode is None for g in snap.gpus)
    assert not [r for r in caplog.records if "mig" in r.getMessage().lower()]


# ---------------------------------------------------------------- old drivers
def test_r470_driver_falls_back_to_v2_process_calls_and_says_so_once(fake_nvml, open_backend,
                                                                    caplog):
    fake_nvml.configure([_a100(0, compute_processes=[FakeProcess(os.getpid(), 1024)]),
                         _a100(1, graphics_processes=[FakeProcess(os.getppid(), 64)])],
                        driver_version="470.223.02", missing_functions=DRIVER_R470)
    backend = open_backend()
    with caplog.at_level(logging.INFO, logger="gpufleet.gpu"):
        snaps = [backend.snapshot() for _ in range(3)]
    assert [(p.pid, p.gpu_index, p.type) for p in snaps[0].processes] == [
        (os.getpid(), 0, "compute"), (os.getppid(), 1, "graphics")]
    assert snaps[0].processes[0].memory_mb == 1024
    assert snaps[-1].node.nvml_process_api == "v2"
    said = [r.getMessage() for r in caplog.records if "process lists" in r.getMessage()]
    assert said == ["NVML process lists: this driver has no _v3 calls; using the _v2 calls"]
    assert fake_nvml.calls["nvmlDeviceGetComputeRunningProcesses_v3"] == 1  # tried once
    # The old name of the throttle call answers in place of the renamed one.
    assert snaps[0].gpus[0].throttle_reasons == []
    assert fake_nvml.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == 6


def test_r418_driver_lists_processes_through_the_original_call(fake_nvml, open_backend):
    fake_nvml.configure([_a100(0, remapped_rows=None, compute_processes=[
        FakeProcess(os.getpid(), 2048), FakeProcess(99_999_999, None)])],
        driver_version="418.226.00", missing_functions=DRIVER_R418)
    snap = open_backend().snapshot()
    assert snap.node.nvml_process_api == "v1"
    assert [(p.pid, p.memory_mb, p.visible) for p in snap.processes] == [
        (os.getpid(), 2048, True), (99_999_999, None, False)]
    assert fake_nvml.calls["nvmlDeviceGetComputeRunningProcesses"] >= 2  # the C entry point
    assert snap.gpus[0].remapped_rows is None and snap.warnings == ()


def test_current_driver_uses_v3_and_says_so(fake_nvml, open_backend):
    fake_nvml.configure([_a100(0)])
    snap = open_backend().snapshot()
    assert snap.node.nvml_process_api == "v3"
    assert fake_nvml.calls["nvmlDeviceGetComputeRunningProcesses_v2"] == 0


# ---------------------------------------------------------------- XIDs and PCIe in the background
def test_xids_since_start_are_collected_per_gpu_and_bounded(fake_nvml, open_backend):
    fake_nvml.configure([_a100(0), _a100(1)])
    backend = open_backend()
    assert fake_nvml.inject_xid(1, 48) == 1
    assert backend.watcher.wait_for(lambda: backend.watcher.xids(1)[1] == 1, WAIT_S)
    snap = backend.snapshot()
    assert [x.xid for x in snap.gpus[1].xid_errors] == [48] and snap.gpus[1].xid_error_count == 1
    assert snap.gpus[0].xid_errors == [] and snap.gpus[1].health_problems() == [
        "1 XID error(s), last XID 48"]
    for n in range(30):
        fake_nvml.inject_xid(0, 13 if n % 2 else 31)
    assert backend.watcher.wait_for(lambda: backend.watcher.xids(0)[1] == 30, WAIT_S)
    gpu0 = backend.snapshot().gpus[0]
    assert gpu0.xid_error_count == 30 and len(gpu0.xid_errors) == 20  # the latest 20 kept
    assert gpu0.xid_errors[-1].xid == 13


def test_pcie_throughput_is_refreshed_in_the_background(fake_nvml, open_backend):
    gpu = _a100(0, pcie_rx_kb_s=100)
    fake_nvml.configure([gpu])
    backend = open_backend(watcher=lambda nvml, handles: NvmlWatcher(
        nvml, handles, pcie_interval_s=0.01, event_wait_ms=5))
    assert backend.snapshot().gpus[0].pcie.rx_kb_s == 100  # the first round ran at start
    gpu.pcie_rx_kb_s = 7_000
    rounds = backend.watcher.pcie_rounds
    assert backend.watcher.wait_for(lambda: backend.watcher.pcie_rounds >= rounds + 2, WAIT_S)
    assert backend.snapshot().gpus[0].pcie.rx_kb_s == 7_000


def test_close_stops_the_watcher_before_nvml_shuts_down(fake_nvml, open_backend):
    fake_nvml.configure([_a100(0)])
    backend = open_backend()
    backend.close()
    assert fake_nvml.calls["nvmlEventSetFree"] == 1 and fake_nvml.calls["nvmlShutdown"] == 1
    assert fake_nvml.inject_xid(0, 79) == 0  # nobody listens any more


# ---------------------------------------------------------------- real machines' quirks
def test_mixed_box(fake_nvml, open_backend, sleeper):
    """One GPU without power readings, another without utilization or processes."""
    child = sleeper()
    fake_nvml.configure([
        _a100(0, util_gpu=80, compute_processes=[FakeProcess(child.pid, 4096)]),
        FakeGpu(name="NVIDIA T4", uuid="GPU-t4", mig_mode=None, not_supported={
            "nvmlDeviceGetPowerUsage", "nvmlDeviceGetEnforcedPowerLimit",
            "nvmlDeviceGetTotalEnergyConsumption"}),
        FakeGpu(name="Quadro P2000", uuid="GPU-p2000", mig_mode=None, not_supported={
            "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetComputeRunningProcesses_v3",
            "nvmlDeviceGetGraphicsRunningProcesses_v3"}),
    ])
    backend = open_backend()
    snap = backend.snapshot()
    a100, t4, quadro = snap.gpus
    assert a100.power_draw_w == 60.0 and a100.utilization.gpu_percent == 80
    assert t4.power_draw_w is None and t4.power_limit_w is None and t4.energy_j is None
    assert t4.utilization.gpu_percent == 0 and t4.temperature_c == 35
    assert quadro.utilization.gpu_percent is None and quadro.power_draw_w == 60.0
    assert [p.pid for p in snap.processes] == [child.pid]
    assert snap.warnings == ("GPU 1: power_draw_w", "GPU 1: power_limit_w", "GPU 1: energy_j",
                             "GPU 2: utilization", "GPU 2: compute_processes",
                             "GPU 2: graphics_processes")
    assert backend.snapshot().warnings == ()
    body = GpuStatusResponse(timestamp=snap.taken_at, gpus=list(snap.gpus),
                             processes=list(snap.processes), total_gpus=3, node=snap.node)
    text = body.model_dump_json()
    assert GpuStatusResponse.model_validate_json(text).model_dump_json() == text


def test_a_pid_that_exits_between_the_driver_and_proc(fake_nvml, open_backend, sleeper):
    stays, leaves = sleeper(), sleeper()
    fake_nvml.configure([_a100(0, compute_processes=[FakeProcess(stays.pid, 1024),
                                                     FakeProcess(leaves.pid, 2048)])])
    backend = open_backend()
    first = {p.pid: p for p in backend.snapshot().processes}
    assert first[leaves.pid].visible and first[leaves.pid].started_at is not None

    def exit_now(name: str, pids: list[int]) -> None:
        if leaves.pid in pids and leaves.poll() is None:
            leaves.kill()
            leaves.wait()  # reaped: /proc has no such PID any more

    fake_nvml.after_process_list(exit_now)
    second = {p.pid: p for p in backend.snapshot().processes}
    gone = second[leaves.pid]
    # What the driver said, nothing stale from the first snapshot's /proc reading.
    assert (gone.visible, gone.name, gone.memory_mb, gone.user, gone.command) == (
        False, "unknown", 2048, None, None)
    assert gone.cpu_percent is None and gone.started_at is None and gone.children is None
    assert second[stays.pid].visible and second[stays.pid].cpu_percent is not None
    fake_nvml.after_process_list(None)
    fake_nvml.set_processes(0, [FakeProcess(stays.pid, 1024)])  # the driver lets it go too
    assert [p.pid for p in backend.snapshot().processes] == [stays.pid]


def test_a_gpu_falls_off_the_bus_mid_run(fake_nvml, open_backend, sleeper, caplog):
    child = sleeper()
    gpus = [_a100(i, used_mib=1000 * (i + 1)) for i in range(3)]
    gpus[1].compute_processes = [FakeProcess(child.pid, 900)]
    fake_nvml.configure(gpus)
    backend = open_backend()
    assert [p.gpu_index for p in backend.snapshot().processes] == [1]
    gpus[1].lost = True  # the driver's XID 79, then every call on it answers "GPU is lost"
    fake_nvml.inject_xid(1, 79)
    assert backend.watcher.wait_for(lambda: backend.watcher.xids(1)[1] == 1, WAIT_S)
    with caplog.at_level(logging.WARNING, logger="gpufleet.gpu"):
        snap = backend.snapshot()
    lost = snap.gpus[1]
    assert lost.lost and [x.xid for x in lost.xid_errors] == [79]
    assert lost.health_problems() == ["GPU is lost", "1 XID error(s), last XID 79"]
    assert lost.throttle_reasons is None and lost.ecc_errors is None and lost.pcie is None
    assert [g.memory.used_mb for g in (snap.gpus[0], snap.gpus[2])] == [1000, 3000]
    assert snap.processes == ()
    assert [r.getMessage() for r in caplog.records] == ["GPU 1: XID 79", "GPU 1: GPU is lost"]
    assert backend.snapshot().gpus[1].lost  # and stays lost, without a second warning

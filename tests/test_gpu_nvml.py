"""NvmlBackend on the fake pynvml module (and, marked ``nvml``, on the real library)."""

from __future__ import annotations

import inspect
import logging
import os

import pytest

from gpufleet.server.gpu.base import BackendUnavailable
from gpufleet.server.gpu.nvml import NvmlBackend
from tests.fakes.pynvml import FakeGpu, FakeMigDevice, FakeProcess

GONE_PID = 99_999_999  # above any pid_max: the host cannot see it (another container's PID)


def _a100(i: int, **kw) -> FakeGpu:
    return FakeGpu(name="NVIDIA A100-SXM4-80GB", uuid=f"GPU-a100-{i}", **kw)


def test_reads_every_field_in_nvml_units(fake_nvml):
    fake_nvml.configure([
        _a100(0, used_mib=45056, util_gpu=72, util_memory=55, temperature_c=65,
              power_mw=312_500, power_limit_mw=400_000, energy_mj=18_750_123, fan_pct=41,
              sm_clock_mhz=1410, mem_clock_mhz=1593, pstate=0,
              compute_processes=[FakeProcess(os.getpid(), 40960)]),
    ])
    backend = NvmlBackend(nvml_module=fake_nvml)
    snap = backend.snapshot()
    gpu = snap.gpus[0]
    assert (gpu.index, gpu.name, gpu.uuid) == (0, "NVIDIA A100-SXM4-80GB", "GPU-a100-0")
    assert gpu.memory.model_dump() == {
        "total_mb": 81920, "used_mb": 45056, "free_mb": 36864,
        "total_gb": 80.0, "used_gb": 44.0, "free_gb": 36.0, "percent_used": 55.0,
    }
    assert (gpu.utilization.gpu_percent, gpu.utilization.memory_percent) == (72, 55)
    assert gpu.temperature_c == 65
    assert gpu.power_draw_w == 312.5 and gpu.power_limit_w == 400.0
    assert gpu.energy_j == pytest.approx(18750.123)
    assert (gpu.fan_speed_pct, gpu.sm_clock_mhz, gpu.memory_clock_mhz) == (41, 1410, 1593)
    assert gpu.pstate == "P0" and gpu.mig_mode is False and not gpu.lost
    assert snap.node.backend == "nvml" and snap.node.simulated is False
    assert (snap.node.driver_version, snap.node.cuda_version) == ("550.54.15", "12.4")
    assert snap.node.nvml_version == "12.550.54.15"
    assert snap.warnings == ()
    (proc,) = snap.processes
    assert (proc.pid, proc.memory_mb, proc.gpu_index, proc.type) == (os.getpid(), 40960, 0, "compute")
    assert proc.visible and proc.name != "unknown" and proc.command and proc.user


def test_init_once_and_handles_cached(fake_nvml):
    fake_nvml.configure([_a100(0), _a100(1), _a100(2)])
    backend = NvmlBackend(nvml_module=fake_nvml)
    for _ in range(5):
        assert len(backend.snapshot().gpus) == 3
    assert fake_nvml.calls["nvmlInit"] == 1
    assert fake_nvml.calls["nvmlDeviceGetHandleByIndex"] == 3
    assert fake_nvml.calls["nvmlDeviceGetName"] == 3  # static fields read once too
    assert fake_nvml.calls["nvmlDeviceGetMemoryInfo"] == 15  # dynamic fields every snapshot
    backend.close()
    assert fake_nvml.calls["nvmlShutdown"] == 1
    with pytest.raises(BackendUnavailable):
        backend.snapshot()


def test_not_supported_and_no_permission_become_none_reported_once(fake_nvml, caplog):
    fake_nvml.configure([
        _a100(0, not_supported={"nvmlDeviceGetFanSpeed"}),
        _a100(1, no_permission={"nvmlDeviceGetTotalEnergyConsumption"}),
    ])
    backend = NvmlBackend(nvml_module=fake_nvml)
    with caplog.at_level(logging.WARNING, logger="gpufleet.gpu"):
        first = backend.snapshot()
        later = [backend.snapshot() for _ in range(3)]
    assert first.gpus[0].fan_speed_pct is None and first.gpus[0].temperature_c == 35
    assert first.gpus[1].energy_j is None and first.gpus[1].fan_speed_pct == 30
    assert first.warnings == ("GPU 0: fan_speed_pct", "GPU 1: energy_j")
    assert all(s.warnings == () for s in later)
    assert all(s.gpus[0].fan_speed_pct is None for s in later)
    assert [r.getMessage() for r in caplog.records] == ["GPU 0: fan_speed_pct", "GPU 1: energy_j"]
    # an A100 remaps rows instead of retiring pages: known, but no warning
    assert backend.unsupported_fields == ("GPU 0: fan_speed_pct", "GPU 0: retired_pages",
                                          "GPU 1: energy_j", "GPU 1: retired_pages")


def test_lost_gpu_does_not_take_the_others_down(fake_nvml):
    gpus = [_a100(0, used_mib=1000), _a100(1, used_mib=2000), _a100(2, used_mib=3000)]
    fake_nvml.configure(gpus)
    backend = NvmlBackend(nvml_module=fake_nvml)
    assert backend.snapshot().gpus[1].memory.used_mb == 2000
    gpus[1].lost = True  # falls off the bus after init
    snap = backend.snapshot()
    lost = snap.gpus[1]
    assert lost.lost and lost.name == "NVIDIA A100-SXM4-80GB" and lost.uuid == "GPU-a100-1"
    assert lost.temperature_c is None and lost.power_draw_w is None
    assert lost.utilization.gpu_percent is None and lost.memory.used_mb == 0
    assert [g.memory.used_mb for g in (snap.gpus[0], snap.gpus[2])] == [1000, 3000]
    assert snap.warnings == ("GPU 1: GPU is lost",)
    assert backend.snapshot().warnings == ()


def test_gpu_lost_before_init_gets_no_handle_but_a_row(fake_nvml):
    fake_nvml.configure([_a100(0), _a100(1, lost=True)])
    snap = NvmlBackend(nvml_module=fake_nvml).snapshot()
    assert [g.lost for g in snap.gpus] == [False, True]
    assert snap.gpus[1].index == 1


def test_processes_compute_graphics_and_invisible_pid(fake_nvml):
    fake_nvml.configure([
        _a100(0, compute_processes=[FakeProcess(GONE_PID, 2048), FakeProcess(os.getpid(), 512)],
              graphics_processes=[FakeProcess(os.getpid(), 512), FakeProcess(os.getppid(), None)]),
    ])
    snap = NvmlBackend(nvml_module=fake_nvml).snapshot()
    by_pid = {p.pid: p for p in snap.processes}
    assert len(snap.processes) == 3  # the C+G PID is listed once
    gone = by_pid[GONE_PID]
    assert (gone.name, gone.visible, gone.memory_mb, gone.user, gone.command) == (
        "unknown", False, 2048, None, None)
    assert by_pid[os.getpid()].type == "compute" and by_pid[os.getpid()].visible
    parent = by_pid[os.getppid()]
    assert parent.type == "graphics" and parent.memory_mb is None


def test_mig_devices_listed_when_mig_is_on(fake_nvml):
    fake_nvml.configure([
        _a100(0, mig_mode=1, max_mig_devices=7, mig_devices=[
            FakeMigDevice("MIG-aaa", "NVIDIA A100-SXM4-80GB MIG 3g.40gb", 40192, 1024),
            FakeMigDevice("MIG-bbb", "NVIDIA A100-SXM4-80GB MIG 3g.40gb", 40192, 0),
        ]),
        FakeGpu(name="NVIDIA L40S", uuid="GPU-l40s", mig_mode=None),
    ])
    snap = NvmlBackend(nvml_module=fake_nvml).snapshot()
    mig_gpu, plain = snap.gpus
    assert mig_gpu.mig_mode is True
    assert [(m.index, m.uuid, m.memory_total_mb, m.memory_used_mb) for m in mig_gpu.mig_devices] == [
        (0, "MIG-aaa", 40192, 1024), (1, "MIG-bbb", 40192, 0)]
    assert mig_gpu.utilization.gpu_percent is None  # the driver has no whole-GPU figure under MIG
    assert plain.mig_mode is None and plain.mig_devices == []
    assert snap.warnings == ("GPU 0: utilization",)  # no MIG on an L40S is normal, not a warning


def test_unknown_pstate_is_none(fake_nvml):
    fake_nvml.configure([_a100(0, pstate=fake_nvml.NVML_PSTATE_UNKNOWN), _a100(1, pstate=8)])
    snap = NvmlBackend(nvml_module=fake_nvml).snapshot()
    assert [g.pstate for g in snap.gpus] == [None, "P8"]


def test_unavailable_without_library_or_gpus(fake_nvml):
    fake_nvml.configure([], init_error=fake_nvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    with pytest.raises(BackendUnavailable, match="NVML Shared Library Not Found"):
        NvmlBackend(nvml_module=fake_nvml)
    fake_nvml.configure([])
    with pytest.raises(BackendUnavailable, match="no NVIDIA GPU"):
        NvmlBackend(nvml_module=fake_nvml)
    assert fake_nvml.calls["nvmlShutdown"] == 1  # the session it opened is closed again


def test_fake_errors_are_subclassed_by_code_like_pynvml(fake_nvml):
    err = fake_nvml.NVMLError(fake_nvml.NVML_ERROR_NOT_SUPPORTED)
    assert type(err) is fake_nvml.NVMLError_NotSupported and str(err) == "Not Supported"
    assert isinstance(fake_nvml.NVMLError_GpuIsLost(), fake_nvml.NVMLError)
    assert fake_nvml.NVMLError_GpuIsLost().value == fake_nvml.NVML_ERROR_GPU_IS_LOST
    with pytest.raises(fake_nvml.NVMLError_Uninitialized):
        fake_nvml.nvmlDeviceGetCount()


def test_fake_matches_the_real_modules_names_and_codes(fake_nvml):
    import pynvml as real

    public = [n for n in dir(fake_nvml) if n.startswith(("nvml", "NVML", "c_nvml"))]
    assert len(public) > 60
    missing = [n for n in public if not hasattr(real, n)]
    assert missing == []
    for name in public:
        fake_value, real_value = getattr(fake_nvml, name), getattr(real, name)
        if name.startswith("NVML_") or (name.startswith("nvml") and isinstance(fake_value, int)):
            if hasattr(fake_value, "value"):  # a ctypes constant
                fake_value, real_value = fake_value.value, real_value.value
            assert fake_value == real_value, name
        elif name.startswith("nvml") and callable(fake_value):
            # same parameter names, so a call that works on the fake works on the real module
            fake_params = list(inspect.signature(fake_value).parameters)
            real_params = list(inspect.signature(real_value).parameters)
            assert fake_params == real_params, name
    for field_owner in ("c_nvmlMemory_t", "c_nvmlUtilization_t", "c_nvmlEventData_t",
                        "c_nvmlProcessInfo_v2_t", "c_nvmlProcessInfo_v3_t"):
        fake_fields = [f[0] for f in getattr(fake_nvml, field_owner)._fields_]
        assert fake_fields == [f[0] for f in getattr(real, field_owner)._fields_]
    real_err = real.NVMLError(real.NVML_ERROR_GPU_IS_LOST)
    fake_err = fake_nvml.NVMLError(fake_nvml.NVML_ERROR_GPU_IS_LOST)
    assert type(real_err).__name__ == type(fake_err).__name__ == "NVMLError_GpuIsLost"


# ---------------------------------------------------------------- the real library
@pytest.fixture
def real_backend():
    try:
        backend = NvmlBackend()
    except BackendUnavailable as exc:
        pytest.skip(f"no usable NVML here: {exc}")
    yield backend
    backend.close()


@pytest.mark.nvml
def test_real_nvml_snapshot(real_backend):
    snap = real_backend.snapshot()
    assert snap.node.backend == "nvml" and snap.node.driver_version
    assert len(snap.gpus) == real_backend.gpu_count >= 1
    for gpu in snap.gpus:
        assert gpu.name and not gpu.lost
        assert gpu.memory.total_mb > 0 and 0 <= gpu.memory.used_mb <= gpu.memory.total_mb
        assert gpu.uuid and gpu.uuid.startswith(("GPU-", "MIG-"))
        assert gpu.pstate is None or gpu.pstate.startswith("P")


@pytest.mark.nvml
def test_real_nvml_energy_counter_does_not_go_backwards(real_backend):
    first = real_backend.snapshot().gpus
    second = real_backend.snapshot().gpus
    for a, b in zip(first, second, strict=True):
        if a.energy_j is not None and b.energy_j is not None:
            assert b.energy_j >= a.energy_j


def test_a_mig_slot_nvml_refuses_costs_that_slot_only(fake_nvml):
    mig = _a100(0, mig_mode=1, max_mig_devices=7, mig_devices=[
        FakeMigDevice("MIG-aaa", "NVIDIA A100-SXM4-80GB MIG 3g.40gb", 40192, 1024)])
    mig.no_permission.add("nvmlDeviceGetMigDeviceHandleByIndex")
    fake_nvml.configure([mig, _a100(1)])
    snap = NvmlBackend(nvml_module=fake_nvml).snapshot()
    assert [g.uuid for g in snap.gpus] == ["GPU-a100-0", "GPU-a100-1"]
    assert snap.gpus[0].mig_mode is True and snap.gpus[0].mig_devices == []
    assert snap.gpus[0].memory.total_mb == 81920 and not snap.gpus[0].lost
    assert not snap.gpus[1].lost
    assert any(w.startswith("GPU 0: MIG device 0 (") for w in snap.warnings)


# ---------------------------------------------------------------- the real library: issue 14's reads
@pytest.mark.nvml
def test_real_nvml_health_fields_are_well_formed(real_backend):
    from gpufleet.server.schemas import THROTTLE_REASON_NAMES

    for gpu in real_backend.snapshot().gpus:
        if gpu.throttle_reasons is not None:
            assert all(r in THROTTLE_REASON_NAMES or r.startswith("unknown_0x")
                       for r in gpu.throttle_reasons), gpu.throttle_reasons
        if gpu.ecc_errors is not None:
            counts = gpu.ecc_errors.model_dump().values()
            assert all(c is None or c >= 0 for c in counts)
        if gpu.remapped_rows is not None:
            assert gpu.remapped_rows.correctable >= 0 and gpu.remapped_rows.uncorrectable >= 0
        if gpu.retired_pages is not None:
            assert gpu.retired_pages.pending in (True, False, None)
        if gpu.pcie is not None:
            assert gpu.pcie.link_gen is None or 1 <= gpu.pcie.link_gen <= 6
            assert gpu.pcie.link_width is None or gpu.pcie.link_width in (1, 2, 4, 8, 16, 32)
            assert gpu.pcie.max_link_gen is None or gpu.pcie.max_link_gen >= (gpu.pcie.link_gen or 1)
            assert all(v is None or v >= 0 for v in (gpu.pcie.tx_kb_s, gpu.pcie.rx_kb_s))
        for engine in (gpu.utilization.encoder_percent, gpu.utilization.decoder_percent):
            assert engine is None or 0 <= engine <= 100
        if gpu.xid_errors is not None:
            assert gpu.xid_error_count >= len(gpu.xid_errors)
        assert gpu.health_problems() is not None  # computable on whatever the GPU reports


@pytest.mark.nvml
def test_real_nvml_names_its_process_call_and_describes_processes(real_backend):
    snap = real_backend.snapshot()
    assert snap.node.nvml_process_api in ("v3", "v2", "v1")
    for proc in snap.processes:
        assert proc.gpu_index is not None and proc.type in ("compute", "graphics")
        if proc.visible:
            assert proc.started_at is not None and proc.elapsed_s >= 0
            assert proc.host_rss_mb is not None and proc.host_rss_mb >= 0
            assert proc.cpu_percent is None or proc.cpu_percent >= 0
            assert proc.children is not None


@pytest.mark.nvml
def test_real_nvml_watcher_samples_pcie_and_stops(real_backend):
    watcher = real_backend.watcher
    rounds = watcher.pcie_rounds
    assert rounds >= 1  # the first round ran before the first snapshot
    assert watcher.wait_for(lambda: watcher.pcie_rounds > rounds, 10.0)
    real_backend.close()
    assert not real_backend.watcher.running

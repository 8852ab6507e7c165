"""The simulated fleet's GPU health and process depth (issue 14): plausible and deterministic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gpufleet.server.gpu.simulated import SimulatedBackend, simulated_backends
from gpufleet.server.gpu.simulated_depth import THERMAL_SLOWDOWN_C
from tests.conftest import FixedClock

TUESDAY_2PM = datetime(2026, 3, 3, 14, 0, tzinfo=UTC)
TUESDAY_3AM = datetime(2026, 3, 3, 3, 0, tzinfo=UTC)


def test_one_described_gpu_throttles_thermally_when_busy():
    snap = SimulatedBackend("inf-l40s-01", clock=lambda: TUESDAY_2PM).snapshot()
    hot = snap.gpus[2]
    assert hot.temperature_c >= THERMAL_SLOWDOWN_C
    assert "sw_thermal_slowdown" in hot.throttle_reasons and hot.throttling
    assert hot.health_problems() == ["throttling: sw thermal slowdown"]
    cool = snap.gpus[3]  # the same job on the next GPU, in a better slot
    assert cool.throttle_reasons == [] and not cool.throttling
    assert hot.sm_clock_mhz < cool.sm_clock_mhz  # slowed down, not just warm
    assert [g.index for g in snap.gpus if g.throttling] == [2]


def test_one_described_gpu_has_ecc_errors_and_a_pending_row_remap():
    clock = FixedClock(TUESDAY_2PM)
    backend = SimulatedBackend("dgx-a100-01", clock=clock)
    clock.advance(minutes=5)
    snap = backend.snapshot()
    sick = snap.gpus[5]
    assert sick.ecc_errors.volatile_uncorrected == 1 and sick.ecc_errors.aggregate_corrected > 0
    assert sick.remapped_rows.pending and not sick.remapped_rows.failed
    assert [x.xid for x in sick.xid_errors] == [94, 63] and sick.xid_error_count == 2
    assert all(TUESDAY_2PM <= x.at <= clock.now for x in sick.xid_errors)  # since the start
    assert sick.health_problems()[0] == "1 uncorrected ECC error(s) since driver load"
    for gpu in snap.gpus:
        if gpu.index != 5:
            assert gpu.health_problems() == [] and gpu.xid_errors == []
            assert gpu.ecc_errors.volatile_uncorrected == 0 and not gpu.remapped_rows.pending
        assert gpu.retired_pages is None  # Ampere remaps rows instead of retiring pages


def test_idle_gpus_say_so_and_their_link_trains_down():
    snap = SimulatedBackend("dgx-a100-01", clock=lambda: TUESDAY_2PM).snapshot()
    idle, busy = snap.gpus[7], snap.gpus[0]
    assert idle.throttle_reasons == ["gpu_idle"] and not idle.throttling
    assert (idle.pcie.link_gen, idle.pcie.max_link_gen) == (1, 4)
    assert (busy.pcie.link_gen, busy.pcie.link_width) == (4, 16)
    assert busy.pcie.rx_kb_s > busy.pcie.tx_kb_s > 0 and idle.pcie.rx_kb_s == 0
    assert busy.utilization.encoder_percent == 0 and busy.utilization.decoder_percent == 0
    h100 = SimulatedBackend("dgx-h100-01", clock=lambda: TUESDAY_3AM).snapshot().gpus[0]
    assert h100.pcie.max_link_gen == 5


def test_processes_carry_cpu_memory_start_cgroup_and_children():
    clock = FixedClock(TUESDAY_2PM)
    backend = SimulatedBackend("dgx-a100-01", clock=clock)
    first = {(p.pid, p.gpu_index): p for p in backend.snapshot().processes}
    trainer = first[next(k for k in first if k[1] == 0)]
    assert trainer.cpu_percent > 100  # a busy training rank feeds its GPU from several cores
    assert trainer.host_rss_mb > 6000 and trainer.started_at < TUESDAY_2PM
    assert trainer.elapsed_s == (TUESDAY_2PM - trainer.started_at).total_seconds()
    assert trainer.cgroup.startswith("/kubepods.slice/") and len(trainer.container_id) == 64
    assert trainer.container_id in trainer.cgroup
    assert [c.name for c in trainer.children] == ["pt_data_worker"] * 4
    assert all(c.ppid == trainer.pid for c in trainer.children)
    clock.advance(minutes=10)
    later = {(p.pid, p.gpu_index): p for p in backend.snapshot().processes}
    again = later[(trainer.pid, 0)]
    assert again.started_at == trainer.started_at  # the same process: the same start
    assert again.elapsed_s == trainer.elapsed_s + 600


def test_each_scheduler_gets_its_own_cgroup_shape():
    ws = SimulatedBackend("ws-gpu-01", clock=lambda: TUESDAY_2PM).snapshot()
    ollama = ws.processes[0]
    assert ollama.cgroup == "/system.slice/ollama.service" and ollama.container_id is None
    assert ollama.children == []
    foreign = [p for p in ws.processes if not p.visible]
    assert len(foreign) == 1 and foreign[0].cpu_percent is None and foreign[0].children is None
    slurm = SimulatedBackend("dgx-h100-01", clock=lambda: TUESDAY_3AM).snapshot().processes[0]
    assert "/slurmstepd.scope/job_" in slurm.cgroup and slurm.container_id is None
    triton = SimulatedBackend("inf-l40s-01", clock=lambda: TUESDAY_2PM).snapshot().processes[0]
    assert [c.name for c in triton.children] == ["triton_python_backend_stub"]


def test_a_reloaded_model_is_a_new_process_started_at_the_reload():
    clock = FixedClock(TUESDAY_2PM)
    backend = SimulatedBackend("ws-gpu-01", clock=clock)
    before = backend.snapshot().processes[0]
    backend.unload("qwen-3.5-27b")
    clock.advance(minutes=3)
    backend.reload_all()
    clock.advance(seconds=30)
    after = backend.snapshot().processes[0]
    assert after.started_at == TUESDAY_2PM + timedelta(minutes=3) != before.started_at
    assert after.elapsed_s == 30.0


def test_same_clock_same_depth():
    one = SimulatedBackend("inf-l40s-01", clock=lambda: TUESDAY_2PM).snapshot()
    two = SimulatedBackend("inf-l40s-01", clock=lambda: TUESDAY_2PM).snapshot()
    assert one == two


def test_synthetic_nodes_have_a_few_faults_too():
    backends = simulated_backends(69, 8, clock=lambda: TUESDAY_2PM)
    gpus = [g for b in backends[5:] for g in b.snapshot().gpus]
    assert len(gpus) == 64 * 8
    erroring = [g for g in gpus if g.remapped_rows.pending]
    hot = [g for g in gpus if g.temperature_c >= 80 and "sw_thermal_slowdown" in g.throttle_reasons]
    assert 0 < len(erroring) < len(gpus) // 10 and 0 < len(hot) < len(gpus) // 10

"""SimulatedBackend: determinism, plausible readings, a monotonic energy counter, unloading models."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from gpufleet.server.fleet import default_fleet
from gpufleet.server.gpu.base import GpuBackend, ModelHost
from gpufleet.server.gpu.load import DAY, LoadCurve
from gpufleet.server.gpu.select import open_backend
from gpufleet.server.gpu.simulated import SimulatedBackend, simulated_backends
from gpufleet.server.schemas import GpuStatusResponse

TUESDAY_2PM = datetime(2026, 3, 3, 14, 0, tzinfo=UTC)
TUESDAY_3AM = datetime(2026, 3, 3, 3, 0, tzinfo=UTC)


def _at(when: datetime):
    return lambda: when


def test_same_clock_same_snapshot():
    one = SimulatedBackend("dgx-a100-01", clock=_at(TUESDAY_2PM)).snapshot()
    two = SimulatedBackend("dgx-a100-01", clock=_at(TUESDAY_2PM)).snapshot()
    assert one == two
    assert len(one.gpus) == 8 and one.node.simulated and one.node.backend == "simulated"
    assert one.node.hostname == "dgx-a100-01"


def test_different_seeds_and_nodes_differ():
    fleet = default_fleet()
    reseeded = fleet.model_copy(update={"seed": fleet.seed + 1})
    base = SimulatedBackend("dgx-a100-01", clock=_at(TUESDAY_2PM)).snapshot()
    other_seed = SimulatedBackend("dgx-a100-01", fleet=reseeded, clock=_at(TUESDAY_2PM)).snapshot()
    assert [g.uuid for g in base.gpus] != [g.uuid for g in other_seed.gpus]
    assert [g.utilization for g in base.gpus] != [g.utilization for g in other_seed.gpus]
    h100 = SimulatedBackend("dgx-h100-01", clock=_at(TUESDAY_2PM)).snapshot()
    assert {g.uuid for g in base.gpus}.isdisjoint(g.uuid for g in h100.gpus)


def test_gpus_models_and_teams_come_from_the_fleet():
    snap = SimulatedBackend("dgx-a100-01", clock=_at(TUESDAY_2PM)).snapshot()
    assert {g.name for g in snap.gpus} == {"NVIDIA A100-SXM4-80GB"}
    assert [g.model_tag for g in snap.gpus[:4]] == ["llama3-70b-finetune"] * 4
    assert snap.gpus[0].team_id == "ml-infra"
    assert snap.gpus[7].model_tag is None and snap.gpus[7].team_id is None  # no job on GPU 7
    for gpu in snap.gpus[:4]:
        assert gpu.memory.used_mb > 71680  # the model plus its runtime's overhead
        assert gpu.memory.used_mb <= gpu.memory.total_mb
    assert snap.gpus[7].memory.used_mb == 0 and snap.gpus[7].pstate == "P8"
    assert snap.gpus[0].fan_speed_pct is None  # SXM modules have no fan: unsupported, not 0


def test_diurnal_load_follows_the_schedule():
    day = SimulatedBackend("ws-gpu-01", clock=_at(TUESDAY_2PM)).snapshot()
    night = SimulatedBackend("ws-gpu-01", clock=_at(TUESDAY_3AM)).snapshot()
    # GPU 0 runs a business-hours job: busy at 14:00, idle (but loaded) at 03:00.
    busy, idle = day.gpus[0], night.gpus[0]
    assert busy.utilization.gpu_percent >= 60 and idle.utilization.gpu_percent <= 5
    assert busy.power_draw_w > idle.power_draw_w and busy.temperature_c > idle.temperature_c
    assert busy.sm_clock_mhz > idle.sm_clock_mhz
    assert idle.memory.used_mb > 55296  # the model stays loaded overnight
    nightly = SimulatedBackend("dgx-h100-01", clock=_at(TUESDAY_3AM)).snapshot()
    assert nightly.gpus[0].utilization.gpu_percent >= 70  # the nightly batch job


def test_energy_counter_never_goes_backwards_and_matches_power():
    now = [TUESDAY_2PM - timedelta(hours=30)]
    backend = SimulatedBackend("dgx-a100-01", clock=lambda: now[0])
    previous = [g.energy_j for g in backend.snapshot().gpus]
    for _ in range(200):
        now[0] += timedelta(minutes=11)
        current = [g.energy_j for g in backend.snapshot().gpus]
        assert all(b >= a for a, b in zip(previous, current, strict=True))
        previous = current
    # Over an hour the counter grows by about the mean power times 3600 s.
    start = [g.energy_j for g in backend.snapshot().gpus]
    watts = []
    for _ in range(60):
        now[0] += timedelta(minutes=1)
        watts.append(backend.snapshot().gpus[0].power_draw_w)
    end = backend.snapshot().gpus[0].energy_j
    assert (end - start[0]) / 3600 == pytest.approx(sum(watts) / len(watts), rel=0.1)


@pytest.mark.parametrize("schedule", ["continuous", "business_hours", "nightly", "adhoc"])
def test_load_curve_integral_matches_its_level(schedule):
    curve = LoadCurve(schedule, seed=7)
    t0, t1 = 800 * DAY + 5.5 * 3600, 800 * DAY + 9 * DAY
    step = 60.0
    numeric = sum(curve.level(t0 + (i + 0.5) * step) * step for i in range(int((t1 - t0) / step)))
    assert curve.integral(t1) - curve.integral(t0) == pytest.approx(numeric, rel=0.01)


def test_unload_frees_memory_drops_process_and_stays_unloaded():
    now = [TUESDAY_2PM]
    backend = SimulatedBackend("dgx-a100-01", clock=lambda: now[0])
    assert isinstance(backend, ModelHost) and isinstance(backend, GpuBackend)
    before = backend.snapshot()
    names = {m.name for m in backend.loaded_models()}
    assert names == {"llama3-70b-finetune", "mistral-7b-eval", "sdxl-base"}
    energy_before = [g.energy_j for g in before.gpus]
    backend.unload("llama3-70b-finetune")
    now[0] += timedelta(minutes=5)
    after = backend.snapshot()
    for i in range(4):
        assert 300 <= after.gpus[i].memory.used_mb <= 500  # a residual, not the model
        assert after.gpus[i].utilization.gpu_percent == 0 and after.gpus[i].model_tag is None
        assert after.gpus[i].energy_j > energy_before[i]
    assert not [p for p in after.processes if p.gpu_index in range(4)]
    assert after.gpus[4].model_tag == "mistral-7b-eval"  # other models are left alone
    assert after.gpus[4].memory.used_mb > 16384
    assert "llama3-70b-finetune" not in {m.name for m in backend.loaded_models()}
    with pytest.raises(KeyError):
        backend.unload("llama3-70b-finetune")
    now[0] += timedelta(hours=3)
    assert backend.snapshot().gpus[0].memory.used_mb < 1000  # still unloaded later on
    energy_unloaded = backend.snapshot().gpus[0].energy_j
    backend.reload_all()
    now[0] += timedelta(minutes=1)
    reloaded = backend.snapshot().gpus[0]
    assert reloaded.model_tag == "llama3-70b-finetune" and reloaded.memory.used_mb > 71680
    assert reloaded.energy_j >= energy_unloaded


def test_loaded_models_in_use_follows_the_clock():
    day = {m.name: m for m in SimulatedBackend("ws-gpu-01", clock=_at(TUESDAY_2PM)).loaded_models()}
    night = {m.name: m for m in SimulatedBackend("ws-gpu-01", clock=_at(TUESDAY_3AM)).loaded_models()}
    assert day["qwen-3.5-27b"].in_use and not night["qwen-3.5-27b"].in_use
    assert day["bge-embed"].in_use and night["bge-embed"].in_use  # continuous
    assert day["qwen-3.5-27b"].memory_mb == 55296 and day["qwen-3.5-27b"].gpu_index == 0


def test_local_node_has_one_process_the_host_cannot_see():
    snap = SimulatedBackend(clock=_at(TUESDAY_2PM)).snapshot()
    assert snap.node.hostname == default_fleet().local_node
    hidden = [p for p in snap.processes if not p.visible]
    assert len(hidden) == 1 and hidden[0].name == "unknown" and hidden[0].user is None
    visible = {p.name for p in snap.processes if p.visible}
    assert visible == {"ollama"}
    assert all(p.user in {"inference", "data-science"} for p in snap.processes if p.visible)


def test_simulated_backends_described_first_then_synthetic():
    backends = simulated_backends(9, gpus_per_node=4, clock=_at(TUESDAY_2PM))
    names = [b.node_name for b in backends]
    described = [n.name for n in default_fleet().nodes]
    assert names[: len(described)] == described
    assert names[len(described):] == ["sim-node-001", "sim-node-002", "sim-node-003", "sim-node-004"]
    assert len(backends[1].snapshot().gpus) == 8  # described nodes keep their GPUs
    for backend in backends[len(described):]:
        snap = backend.snapshot()
        assert len(snap.gpus) == 4 and snap.node.simulated
        for gpu in snap.gpus:
            assert gpu.memory.used_mb <= gpu.memory.total_mb
    again = simulated_backends(9, gpus_per_node=4, clock=_at(TUESDAY_2PM))
    assert again[-1].snapshot() == backends[-1].snapshot()
    assert len(simulated_backends(3)) == 3


def test_snapshot_is_thread_safe_and_schema_valid():
    backend = SimulatedBackend("dgx-h100-01", clock=_at(TUESDAY_2PM))
    results = []

    def read():
        for _ in range(20):
            results.append(backend.snapshot())

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 80 and all(r == results[0] for r in results)
    snap = results[0]
    body = GpuStatusResponse(timestamp=snap.taken_at, gpus=list(snap.gpus),
                             processes=list(snap.processes), total_gpus=len(snap.gpus),
                             node=snap.node)
    assert GpuStatusResponse.model_validate_json(body.model_dump_json(by_alias=True)) == body


def test_open_backend_falls_back_to_the_simulator_here():
    backend = open_backend(simulate=True)
    assert backend.simulated and backend.snapshot().node.simulated
    chosen = open_backend()
    try:
        assert chosen.snapshot().node.simulated == chosen.simulated
    finally:
        chosen.close()

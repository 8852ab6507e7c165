"""A GPU shared by several workloads: one sample per workload, its fraction and basis.

Real child processes carry the Slurm jobs' environments (attribution reads their
/proc); only NVML is faked (tests/fakes/pynvml, with nvmlDeviceGetProcessUtilization).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest

from gpufleet.server.agent.attribution import ProcessAttributor, workload_fractions
from gpufleet.server.agent.sampler import Sampler
from gpufleet.server.api.validation import validate_batch
from gpufleet.server.config import AgentSettings, Pricing
from gpufleet.server.gpu.nvml import NvmlBackend
from gpufleet.server.gpu.simulated import SimulatedBackend
from gpufleet.server.schemas import GpuProcess, MetricSample
from gpufleet.server.store import MetricsStore

SETTINGS = AgentSettings()


def _child(job: str, account: str, model: str) -> subprocess.Popen[bytes]:
    """A process of a Slurm job, once it runs: /proc shows its environment only after exec."""
    env = dict(os.environ, SLURM_JOB_ID=job, SLURM_JOB_ACCOUNT=account, GPUFLEET_MODEL_TAG=model)
    child = subprocess.Popen([sys.executable, "-c", "import sys; print(flush=True); sys.stdin.read()"],
                             env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"\n"
    return child


@pytest.fixture
def two_jobs() -> Iterator[tuple[int, int]]:
    jobs = [_child("101", "nlp", "llama3-8b"), _child("202", "vision", "sam2")]
    yield jobs[0].pid, jobs[1].pid
    for job in jobs:
        assert job.stdin is not None
        job.stdin.close()
        job.wait(timeout=10)


def shared_node(fake: ModuleType, pids: tuple[int, int], *, sm: tuple[int | None, int | None],
                mib: tuple[int, int] = (30_000, 10_000), **gpu: object) -> NvmlBackend:
    fake.configure([
        fake.FakeGpu(uuid="GPU-shared", used_mib=sum(mib) + 500, util_gpu=70, compute_processes=[
            fake.FakeProcess(pids[0], mib[0], sm_util=sm[0]), fake.FakeProcess(pids[1], mib[1], sm_util=sm[1])],
            **gpu),
        fake.FakeGpu(uuid="GPU-idle"),
    ])
    return NvmlBackend(fake)


def rows(backend: NvmlBackend) -> list[dict[str, object]]:
    samples = Sampler(backend, ProcessAttributor(SETTINGS)).sample()
    for sample in samples:
        MetricSample.model_validate(sample)  # every row is a valid sample of the API
    return samples


def by_job(samples: list[dict[str, object]]) -> dict[object, tuple[object, ...]]:
    return {s.get("job_id"): (s["gpu_uuid"], s.get("team_id"), s.get("model_tag"), s.get("gpu_fraction"),
                              s.get("gpu_fraction_basis")) for s in samples}


def test_two_jobs_on_one_gpu_are_two_rows_split_by_sm_utilization(fake_nvml, two_jobs) -> None:
    samples = rows(shared_node(fake_nvml, two_jobs, sm=(60, 20)))
    assert by_job(samples) == {
        "101": ("GPU-shared", "nlp", "llama3-8b", 0.75, "sm_utilization"),
        "202": ("GPU-shared", "vision", "sam2", 0.25, "sm_utilization"),
        None: ("GPU-idle", None, None, None, None),  # an idle GPU: one row, the defaults
    }
    shared = [s for s in samples if s["gpu_uuid"] == "GPU-shared"]
    # one reading of the GPU in both rows: the same power, utilization, memory and energy
    figures = ("timestamp", "power_draw_w", "utilization_gpu_pct", "memory_used_mb", "energy_delta_j")
    assert {tuple(s.get(k) for k in figures) for s in shared} == {tuple(shared[0].get(k) for k in figures)}
    assert "gpu_fraction" not in samples[-1]


def test_without_process_utilization_the_split_is_by_gpu_memory(fake_nvml, two_jobs) -> None:
    unsupported = shared_node(fake_nvml, two_jobs, sm=(60, 20),
                              not_supported={"nvmlDeviceGetProcessUtilization"})
    assert {k: v[3:] for k, v in by_job(rows(unsupported)).items() if k} == {
        "101": (0.75, "memory"), "202": (0.25, "memory")}
    assert "GPU 0: process_utilization" in unsupported.unsupported_fields


def test_an_idle_window_falls_back_to_memory_and_new_samples_count_once(fake_nvml, two_jobs) -> None:
    backend = shared_node(fake_nvml, two_jobs, sm=(0, 0), mib=(12_000, 36_000))
    sampler = Sampler(backend, ProcessAttributor(SETTINGS))
    first = {s.get("job_id"): s.get("gpu_fraction") for s in sampler.sample() if s["gpu_uuid"] == "GPU-shared"}
    assert first == {"101": 0.25, "202": 0.75}  # both idle (0 % SM): by memory
    # no sample newer than the last one seen: NVML answers NotFound, every process idle
    again = backend.snapshot()
    assert [p.sm_util_pct for p in again.processes] == [0, 0]
    gpu = fake_nvml._state.gpus[0]
    gpu.util_sample_us += 1_000_000
    for process, sm in zip(gpu.compute_processes, (90, 10), strict=True):
        process.sm_util = sm
    assert [p.sm_util_pct for p in backend.snapshot().processes] == [90, 10]


def test_processes_of_one_job_are_one_workload_and_unknown_ones_join_the_largest(fake_nvml, two_jobs) -> None:
    same = (two_jobs[0], two_jobs[0] + 10_000_000)  # the second PID is nowhere in /proc
    samples = rows(shared_node(fake_nvml, same, sm=(60, 20)))
    shared = [s for s in samples if s["gpu_uuid"] == "GPU-shared"]
    assert [(s.get("job_id"), s.get("gpu_fraction")) for s in shared] == [("101", None)]


def test_fractions_are_rounded_never_over_one_and_zero_is_left_out() -> None:
    def procs(*values: int) -> list[list[GpuProcess]]:
        return [[GpuProcess(pid=i, name="p", sm_util_pct=v, memory_mb=100)] for i, v in enumerate(values)]

    assert workload_fractions(procs(1, 1, 1)) == ([0.3333, 0.3333, 0.3333], "sm_utilization")
    assert workload_fractions(procs(2, 1, 1, 2)) == ([0.3333, 0.1667, 0.1667, 0.3333], "sm_utilization")
    fractions, _ = workload_fractions(procs(5, 5, 5, 5, 5, 5))
    assert sum(f or 0 for f in fractions) <= 1
    assert workload_fractions(procs(100, 0)) == ([1.0, None], "sm_utilization")
    assert workload_fractions([[GpuProcess(pid=1, name="p")], [GpuProcess(pid=2, name="q")]]) == (
        [None, None], None)


def test_serves_own_sampler_stores_the_split_and_bills_it(fake_nvml, two_jobs, tmp_path: Path) -> None:
    """What `gpufleet serve` samples goes the same way into its store and its report."""
    import asyncio

    from gpufleet.server.app import ServerApp
    from tests.api_server import api_settings

    backend = shared_node(fake_nvml, two_jobs, sm=(30, 10))
    with MetricsStore.open(tmp_path / "serve.duckdb") as store:
        app = ServerApp(api_settings(), backend=backend, store=store)
        sampler = Sampler(backend, ProcessAttributor(SETTINGS))
        assert asyncio.run(app.sample_once(sampler, "default")) == 3
        stored = store.query("SELECT job_id, gpu_fraction, gpu_fraction_basis FROM samples"
                             " WHERE gpu_uuid = 'GPU-shared' ORDER BY job_id")
        assert stored == [("101", 0.75, "sm_utilization"), ("202", 0.25, "sm_utilization")]
        # The sample's day and the next: one taken in a day's last minute bills its minute
        # past midnight (the wall clock picks the day; a one-day report cut it short).
        day = store.query("SELECT max(ts) FROM samples")[0][0].date()
        teams = {t.team_id: t.total_gpu_hours
                 for t in store.chargeback("default", day, day + timedelta(days=1), Pricing()).teams}
        assert teams["nlp"] == round(0.75 / 60, 2) and teams["vision"] == round(0.25 / 60, 2)


def test_the_simulated_ollama_node_shares_a_gpu_between_two_teams() -> None:
    at = datetime(2026, 3, 3, 14, 0, tzinfo=UTC)  # a Tuesday afternoon: both models busy
    backend = SimulatedBackend("inf-l40s-01", clock=lambda: at)
    samples = Sampler(backend).sample()
    rows_ = validate_batch(samples, max_samples=100)
    shared = [(s["team_id"], s["model_tag"], s["gpu_fraction_basis"]) for s in rows_ if s["gpu_index"] == 3]
    assert sorted(shared) == [("data-science", "bge-embed", "sm_utilization"),
                              ("inference", "llama3.2-3b", "sm_utilization")]
    fractions = [s["gpu_fraction"] for s in rows_ if s["gpu_index"] == 3]
    assert sum(fractions) == pytest.approx(1.0, abs=1e-4) and min(fractions) > 0.2
    processes = [p for p in backend.snapshot().processes if p.gpu_index == 3]
    assert sorted((p.name, p.team_id) for p in processes) == [("ollama", "data-science"), ("ollama", "inference")]
    assert all(p.sm_util_pct and p.sm_util_pct > 0 for p in processes)

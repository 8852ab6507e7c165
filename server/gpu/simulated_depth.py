"""What the simulated fleet adds for issue 14: GPU health and the host's view of each process.

Deterministic like the rest of the simulator: a function of the node's seed, the GPU, the
job, the clock and when the backend started. One described GPU throttles thermally
(``inf-l40s-01`` GPU 2, in a hot slot) and one has ECC errors with a row remap waiting
for a reset (``dgx-a100-01`` GPU 5); synthetic nodes get a few of each, seeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from gpufleet.server.fleet import JobSpec, ModelSpec
from gpufleet.server.gpu.load import mix, unit
from gpufleet.server.gpu.synthetic import SYNTHETIC_PREFIX
from gpufleet.server.schemas import (
    GpuEcc,
    GpuPcie,
    GpuRemappedRows,
    ProcessChild,
    XidError,
)

Fault = Literal["thermal", "ecc"]

# The described fleet's faulty GPUs. The ECC one changes none of its other readings;
# the hot one runs warmer and slower than it did before these faults existed.
DESCRIBED_FAULTS: dict[tuple[str, int], Fault] = {
    ("inf-l40s-01", 2): "thermal",
    ("dgx-a100-01", 5): "ecc",
}
SYNTHETIC_THERMAL_SHARE = 0.03
SYNTHETIC_ECC_SHARE = 0.02
HOT_SLOT_C = 11.0  # a thermal GPU's extra ambient: poor airflow in its slot
THERMAL_SLOWDOWN_C = 87  # where the driver starts slowing the clocks
THERMAL_CLOCK_SHARE = 0.85  # the SM clock while slowed down
POWER_CAP_SHARE = 0.9  # drawing this share of the limit: the software power cap holds it
IDLE_UTILIZATION = 0.05


def fault_for(node: str, index: int, salt: int) -> Fault | None:
    """Which fault, if any, GPU ``index`` of ``node`` has."""
    if (node, index) in DESCRIBED_FAULTS:
        return DESCRIBED_FAULTS[(node, index)]
    if not node.startswith(SYNTHETIC_PREFIX):
        return None
    if unit(salt, 20) < SYNTHETIC_THERMAL_SHARE:
        return "thermal"
    if unit(salt, 21) < SYNTHETIC_ECC_SHARE:
        return "ecc"
    return None


def throttle_reasons(util: float, loaded: bool, power_w: float, limit_w: float,
                     temperature_c: int) -> list[str]:
    """NVML's clock event reasons for a reading, by name."""
    reasons: list[str] = []
    if not loaded or util < IDLE_UTILIZATION:
        reasons.append("gpu_idle")
    if power_w >= POWER_CAP_SHARE * limit_w:
        reasons.append("sw_power_cap")
    if temperature_c >= THERMAL_SLOWDOWN_C:
        reasons.append("sw_thermal_slowdown")
    return reasons


@dataclass(frozen=True, slots=True)
class Health:
    ecc: GpuEcc
    remapped_rows: GpuRemappedRows
    xids: list[XidError]


def health(fault: Fault | None, started: datetime) -> Health:
    """ECC counts, row remapping and XIDs since ``started`` (the simulated server's start)."""
    if fault != "ecc":
        return Health(
            ecc=GpuEcc(volatile_corrected=0, volatile_uncorrected=0, aggregate_corrected=0,
                       aggregate_uncorrected=0),
            remapped_rows=GpuRemappedRows(correctable=0, uncorrectable=0, pending=False,
                                          failed=False),
            xids=[],
        )
    # An uncorrectable error the hardware contained (XID 94) and the remap it recorded (XID 63).
    return Health(
        ecc=GpuEcc(volatile_corrected=37, volatile_uncorrected=1, aggregate_corrected=1843,
                   aggregate_uncorrected=2),
        remapped_rows=GpuRemappedRows(correctable=3, uncorrectable=1, pending=True, failed=False),
        xids=[XidError(xid=94, at=started), XidError(xid=63, at=started + timedelta(seconds=1))],
    )


def pcie(gpu_name: str, util: float, loaded: bool, salt: int, bucket: int) -> GpuPcie:
    """Link and throughput: an idle link trains down to gen 1 to save power, as real ones do."""
    best = 5 if "H100" in gpu_name else 4
    idle = not loaded or util < IDLE_UTILIZATION
    jitter = 0.8 + 0.4 * unit(salt, 30, bucket)
    return GpuPcie(
        tx_kb_s=int((200 + 900_000 * util) * jitter) if loaded else 0,
        rx_kb_s=int((400 + 2_600_000 * util) * jitter) if loaded else 0,
        link_gen=1 if idle else best, link_width=16, max_link_gen=best, max_link_width=16,
    )


@dataclass(frozen=True, slots=True)
class ProcessDepth:
    cpu_percent: float
    host_rss_mb: int
    started_at: datetime
    elapsed_s: float
    cgroup: str
    container_id: str | None
    children: list[ProcessChild]


def first_start(server_started: datetime, job_seed: int) -> datetime:
    """When a job's process started: 2 hours to 6 days before the simulated server did."""
    return server_started - timedelta(seconds=7_200 + int(511_200 * unit(job_seed, 40)))


def process_depth(model: ModelSpec, job: JobSpec, pid: int, job_seed: int, util: float,
                  now: datetime, started: datetime, bucket: int) -> ProcessDepth:
    """CPU, host memory, start, cgroup and children of a simulated job's process."""
    busy = util >= IDLE_UTILIZATION
    jitter = unit(job_seed, pid, bucket)
    if model.runtime == "process":
        cpu = 110 + 140 * util + 30 * jitter if busy else 1.0 + jitter
        rss = 6_144 + model.memory_mb // 6 + int(2_048 * unit(job_seed, 41))
    elif model.runtime == "triton":
        cpu = 40 + 60 * util + 10 * jitter if busy else 0.5 + jitter
        rss = 2_560 + int(1_024 * unit(job_seed, 41))
    else:
        cpu = 20 + 70 * util + 10 * jitter if busy else 0.2 + 0.5 * jitter
        rss = 880 + int(512 * unit(job_seed, 41))
    cgroup, container = _cgroup(model, job, job_seed)
    return ProcessDepth(
        cpu_percent=round(cpu, 1), host_rss_mb=rss, started_at=started,
        elapsed_s=round((now - started).total_seconds(), 1),
        cgroup=cgroup, container_id=container, children=_children(model, pid, job_seed),
    )


def _container_id(job_seed: int) -> str:
    return "".join(f"{mix(job_seed, 50 + i):016x}" for i in range(4))


def _cgroup(model: ModelSpec, job: JobSpec, job_seed: int) -> tuple[str, str | None]:
    if job.scheduler in ("kubernetes", "runai"):
        raw = f"{mix(job_seed, 60):016x}{mix(job_seed, 61):016x}"
        pod = f"{raw[:8]}_{raw[8:12]}_{raw[12:16]}_{raw[16:20]}_{raw[20:32]}"
        cid = _container_id(job_seed)
        return (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod}.slice/"
                f"cri-containerd-{cid}.scope", cid)
    if job.scheduler == "slurm":
        return f"/system.slice/slurmstepd.scope/job_{job_seed % 900_000 + 100_000}/step_0/user/task_0", None
    if model.runtime == "ollama":
        return "/system.slice/ollama.service", None
    if model.runtime == "triton":
        cid = _container_id(job_seed)
        return f"/system.slice/docker-{cid}.scope", cid
    return f"/user.slice/user-1000.slice/session-{job_seed % 40 + 2}.scope", None


def _children(model: ModelSpec, pid: int, job_seed: int) -> list[ProcessChild]:
    if model.runtime == "process":  # PyTorch DataLoader workers
        return [ProcessChild(pid=pid + 1_000 * (k + 1), ppid=pid, name="pt_data_worker",
                             host_rss_mb=900 + int(600 * unit(job_seed, 70 + k)))
                for k in range(4)]
    if model.runtime == "triton":  # the Python backend runs each model instance in a stub
        return [ProcessChild(pid=pid + 1_000, ppid=pid, name="triton_python_backend_stub",
                             host_rss_mb=410 + int(200 * unit(job_seed, 70)))]
    return []  # an Ollama runner starts no children

"""SimulatedBackend: a deterministic node of the described fleet (sample_data/fleet.toml).

Readings are a pure function of (fleet seed, node name, clock time) plus what was
unloaded: the same clock gives the same snapshot. Utilization follows each job's
schedule; memory, power, temperature, clocks and fan follow utilization; the energy
counter is the exact integral of the smooth power curve since the simulated drivers
loaded (``load.EPOCH``), so it never goes backwards while the clock moves forward.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from gpufleet.server import __version__
from gpufleet.server.fleet import Fleet, GpuModelSpec, JobSpec, ModelSpec, default_fleet
from gpufleet.server.gpu import simulated_depth as depth
from gpufleet.server.gpu.base import GpuBackend, GpuSnapshot, ModelHost
from gpufleet.server.gpu.load import JITTER_BUCKET_S, LoadCurve, mix, seconds_since_epoch, unit
from gpufleet.server.gpu.synthetic import extend_fleet
from gpufleet.server.schemas import (
    GpuInfo,
    GpuMemory,
    GpuProcess,
    GpuUtilization,
    LoadedModel,
    NodeInfo,
    SignalName,
)

SIM_DRIVER_VERSION = "550.54.15"
SIM_CUDA_VERSION = "12.4"
SIM_NVML_VERSION = "12.550.54.15"
PEAK_POWER_SHARE = 0.92  # a busy GPU draws about this share of its power limit
FOREIGN_PROCESS_MB = 1536  # the local node's process from another container

_PROCESS_NAMES = {"ollama": "ollama", "triton": "tritonserver", "process": "python"}


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _command(model: ModelSpec, job: JobSpec, gpu: int) -> str:
    if model.runtime == "ollama":
        return f"/usr/local/bin/ollama runner --model {model.name} --port 114{gpu:02d}"
    if model.runtime == "triton":
        return ("/opt/tritonserver/bin/tritonserver --model-repository=/models "
                f"--model-control-mode=explicit --load-model={model.name}")
    if job.schedule in ("nightly", "continuous") and len(job.gpus) > 1:
        return (f"python -m torch.distributed.run --nproc-per-node={len(job.gpus)} "
                f"train.py --model {model.name} --local-rank={job.gpus.index(gpu)}")
    return f"python serve.py --model {model.name} --device cuda:{gpu}"



def node_seed(fleet_seed: int, node_name: str) -> int:
    """A simulated node's own seed: everything about its GPUs derives from it."""
    return mix(fleet_seed, zlib.crc32(node_name.encode()))


def simulated_gpu_uuid(fleet_seed: int, node_name: str, index: int) -> str:
    """The UUID the simulated fleet gives GPU ``index`` of ``node_name`` (the sample data uses it too)."""
    return _uuid(mix(node_seed(fleet_seed, node_name), index))


def _uuid(salt: int) -> str:
    raw = f"{mix(salt, 1):016x}{mix(salt, 2):016x}"
    return f"GPU-{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:32]}"

@dataclass(slots=True)
class _Tenant:
    """One job's model on a GPU; a shared GPU (several jobs on it) has several."""

    job: JobSpec
    model: ModelSpec
    curve: LoadCurve
    pid: int
    job_seed: int
    loaded: bool = True
    loaded_at: datetime | None = None  # when a reload_all() started its process again


@dataclass(slots=True)
class _SimGpu:
    """One simulated GPU and its mutable state (which models are loaded, energy anchor)."""

    index: int
    spec: GpuModelSpec
    uuid: str
    salt: int
    tenants: list[_Tenant]
    overhead_mb: int
    residual_mb: int
    ambient_c: float
    passive: bool  # SXM modules have no fan of their own: NVML says Not Supported
    foreign_mb: int = 0
    energy_offset_j: float = 0.0  # keeps the counter continuous when models load or unload
    ever_unloaded: bool = False
    fault: depth.Fault | None = None

    @property
    def job(self) -> JobSpec | None:
        return self.tenants[0].job if self.tenants else None

    @property
    def model(self) -> ModelSpec | None:
        return self.tenants[0].model if self.tenants else None

    @property
    def loaded(self) -> bool:
        return any(t.loaded for t in self.tenants)

    @property
    def weight(self) -> float:
        """Each tenant's part of the GPU at full load: tenants share it equally."""
        return 1.0 / len(self.tenants) if self.tenants else 0.0

    def busy_power_w(self) -> float:
        return PEAK_POWER_SHARE * self.spec.power_limit_w - self.spec.idle_power_w

    def loads(self, t: float) -> list[float]:
        """Each tenant's share of the GPU's compute at ``t`` (0 when unloaded)."""
        return [self.weight * x.curve.utilization(t, self.salt) if x.loaded else 0.0 for x in self.tenants]

    def energy_j(self, t: float) -> float:
        busy = sum(self.weight * x.curve.integral(t) for x in self.tenants if x.loaded)
        return self.energy_offset_j + self.spec.idle_power_w * max(t, 0.0) + self.busy_power_w() * busy

    def set_loaded(self, tenant: _Tenant, loaded: bool, t: float) -> None:
        """Load or unload one tenant at ``t``; the energy counter carries on from where it was."""
        before = self.energy_j(t)
        tenant.loaded = loaded
        self.energy_offset_j += before - self.energy_j(t)
        if not loaded:
            self.ever_unloaded = True


class SimulatedBackend(GpuBackend, ModelHost):
    """One node of the simulated fleet; everything it reports says ``simulated``."""

    simulated = True

    def __init__(self, node_name: str | None = None, *, fleet: Fleet | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.fleet = fleet or default_fleet()
        self.node_name = node_name or self.fleet.local_node
        try:
            node = self.fleet.node(self.node_name)
        except KeyError:
            raise ValueError(f"no node {self.node_name!r} in the simulated fleet") from None
        self._clock = clock or _utc_now
        self._started = self._clock()  # XIDs are "since the server started"; jobs ran before
        self._lock = threading.Lock()
        self._seed = node_seed(self.fleet.seed, self.node_name)
        models = {m.name: m for m in self.fleet.models}
        self._gpus = [self._build_gpu(i, arch, self.fleet.jobs_for(self.node_name, i), models)
                      for i, arch in enumerate(node.gpus)]
        if self.node_name == self.fleet.local_node and self._gpus:
            # A PID from another container: the driver reports it, this host cannot see it.
            self._gpus[-1].foreign_mb = FOREIGN_PROCESS_MB
        self._foreign_pid = 200_000 + mix(self._seed, 7) % 100_000
        self._node = NodeInfo(
            hostname=self.node_name, driver_version=SIM_DRIVER_VERSION,
            cuda_version=SIM_CUDA_VERSION, nvml_version=SIM_NVML_VERSION,
            simulated=True, backend="simulated", gpufleet_version=__version__,
        )

    def _build_gpu(self, index: int, arch: str, jobs: list[JobSpec],
                   models: dict[str, ModelSpec]) -> _SimGpu:
        spec = self.fleet.gpu_models[arch]
        salt = mix(self._seed, index)
        fault = depth.fault_for(self.node_name, index, salt)
        tenants = []
        for number, job in enumerate(jobs):
            model = models[job.model]
            job_seed = (mix(self._seed, 1000 + job.gpus[0]) if number == 0
                        else mix(self._seed, 5000 + 97 * index + number))
            # A server runtime is one process across the job's GPUs; a training job is one per GPU.
            pid = 2_000 + job_seed % 60_000 + (0 if model.runtime != "process" else job.gpus.index(index))
            tenants.append(_Tenant(job=job, model=model, curve=LoadCurve(job.schedule, job_seed), pid=pid,
                                   job_seed=job_seed))
        return _SimGpu(
            index=index, spec=spec,
            uuid=_uuid(salt),
            salt=salt, tenants=tenants,
            overhead_mb=400 + int(500 * unit(salt, 3)),
            residual_mb=300 + int(200 * unit(salt, 4)),
            ambient_c=28.0 + 6.0 * unit(salt, 5) + (depth.HOT_SLOT_C if fault == "thermal" else 0.0),
            passive="SXM" in spec.name or "HBM" in spec.name,
            fault=fault,
        )

    # ------------------------------------------------------------ GpuBackend
    def snapshot(self) -> GpuSnapshot:
        with self._lock:
            now = self._clock()
            t = seconds_since_epoch(now)
            gpus: list[GpuInfo] = []
            processes: list[GpuProcess] = []
            for gpu in self._gpus:
                info, procs = self._read(gpu, t, now)
                gpus.append(info)
                processes.extend(procs)
            return GpuSnapshot(taken_at=now, node=self._node, gpus=tuple(gpus),
                               processes=tuple(processes))

    def _read(self, gpu: _SimGpu, t: float, now: datetime) -> tuple[GpuInfo, list[GpuProcess]]:
        spec = gpu.spec
        bucket = int(t // JITTER_BUCKET_S)
        loaded = gpu.loaded
        loads = gpu.loads(t)
        util = sum(loads)
        procs: list[GpuProcess] = []
        used = gpu.foreign_mb + (gpu.residual_mb if gpu.ever_unloaded and not loaded else 0)
        resident = [x for x in gpu.tenants if x.loaded]
        for tenant, load in zip(gpu.tenants, loads, strict=True):
            if not tenant.loaded:
                continue
            model = tenant.model
            # activations / KV cache grow with load, in what the resident models leave free
            room = (spec.memory_mb - sum(x.model.memory_mb for x in resident) - gpu.overhead_mb
                    - gpu.foreign_mb - 256)
            working = int(load / gpu.weight * max(0, min(4096, room)) / len(resident))
            process_mb = model.memory_mb + gpu.overhead_mb // len(resident) + working
            used += process_mb
            started = tenant.loaded_at or depth.first_start(self._started, tenant.job_seed)
            host = depth.process_depth(model, tenant.job, tenant.pid, tenant.job_seed, load / gpu.weight,
                                       now, started, bucket)
            procs.append(GpuProcess(
                pid=tenant.pid, name=_PROCESS_NAMES.get(model.runtime, "python"),
                memory_mb=process_mb, gpu_index=gpu.index, user=model.team,
                command=_command(model, tenant.job, gpu.index), type="compute",
                sm_util_pct=round(100 * load), team_id=model.team, model_tag=model.name,
                cpu_percent=host.cpu_percent, host_rss_mb=host.host_rss_mb,
                started_at=host.started_at, elapsed_s=host.elapsed_s, cgroup=host.cgroup,
                container_id=host.container_id, children=host.children,
            ))
        if gpu.foreign_mb:
            procs.append(GpuProcess(
                pid=self._foreign_pid, name="unknown", memory_mb=gpu.foreign_mb,
                gpu_index=gpu.index, type="compute", visible=False,
            ))
        used = min(used, spec.memory_mb)
        power = spec.idle_power_w + gpu.busy_power_w() * util
        if loaded and util < 0.05:
            power += 0.04 * spec.power_limit_w  # a resident CUDA context keeps clocks up a little
        sm_max = spec.sm_clock_max_mhz
        if loaded:
            sm_clock = int(sm_max * (0.55 + 0.45 * util)) if util >= 0.05 else int(sm_max * 0.5)
        else:
            sm_clock = 210
        temperature = round(gpu.ambient_c + 48.0 * util + (4.0 if loaded else 0.0))
        power_w = round(min(power, spec.power_limit_w), 1)
        reasons = depth.throttle_reasons(util, loaded, power_w, spec.power_limit_w, temperature)
        if "sw_thermal_slowdown" in reasons:
            sm_clock = int(sm_clock * depth.THERMAL_CLOCK_SHARE)
        health = depth.health(gpu.fault, self._started)
        info = GpuInfo(
            index=gpu.index,
            name=spec.name,
            uuid=gpu.uuid,
            memory=GpuMemory.from_mb(spec.memory_mb, used),
            utilization=GpuUtilization(
                gpu_percent=round(util * 100),
                memory_percent=round(util * 62),
                encoder_percent=0, decoder_percent=0,
            ),
            temperature_c=temperature,
            power_draw_w=power_w,
            power_limit_w=float(spec.power_limit_w),
            energy_j=round(gpu.energy_j(t), 3),
            fan_speed_pct=None if gpu.passive else round(30 + 55 * util),
            sm_clock_mhz=sm_clock,
            memory_clock_mhz=spec.memory_clock_mhz if loaded or gpu.passive else 405,
            pstate="P0" if loaded else "P8",
            mig_mode=False,
            team_id=resident[0].model.team if resident else None,
            model_tag=resident[0].model.name if resident else None,
            throttle_reasons=reasons, ecc_errors=health.ecc, remapped_rows=health.remapped_rows,
            pcie=depth.pcie(spec.name, util, loaded, gpu.salt, bucket),
            xid_errors=health.xids, xid_error_count=len(health.xids),
        )
        return info, procs

    # ------------------------------------------------------------ ModelHost
    def loaded_models(self) -> list[LoadedModel]:
        with self._lock:
            t = seconds_since_epoch(self._clock())
            found: dict[str, LoadedModel] = {}
            for gpu in self._gpus:
                for tenant in gpu.tenants:
                    if not tenant.loaded:
                        continue
                    name = tenant.model.name
                    prior = found.get(name)
                    found[name] = LoadedModel(
                        name=name, runtime="simulated",
                        gpu_index=prior.gpu_index if prior else gpu.index,
                        memory_mb=((prior.memory_mb or 0) if prior else 0) + tenant.model.memory_mb,
                        in_use=(prior.in_use if prior else False) or tenant.curve.busy(t),
                        gpu_indices=[*(prior.gpu_indices or []), gpu.index] if prior else [gpu.index],
                    )
            return list(found.values())

    def unload(self, name: str) -> None:
        """Free the model on every GPU it was on; it stays unloaded until reload_all()."""
        with self._lock:
            targets = [(g, x) for g in self._gpus for x in g.tenants if x.loaded and x.model.name == name]
            if not targets:
                raise KeyError(name)
            _free(targets, seconds_since_epoch(self._clock()))

    def signal_process(self, entry: GpuProcess, signal: SignalName) -> None:
        """Any of the three signals ends a simulated process: the GPUs it held are freed."""
        from gpufleet.server.gpu.signals import ProcessGone, SignalRefused

        if not entry.visible:  # the other container's PID: as unreachable as a real one
            raise SignalRefused(f"PID {entry.pid} is not visible to this server (another PID "
                                "namespace, such as a container): it will not signal it")
        with self._lock:
            targets = [(g, x) for g in self._gpus for x in g.tenants if x.loaded and x.pid == entry.pid]
            if not targets:
                raise ProcessGone(f"PID {entry.pid} exited before the signal")
            _free(targets, seconds_since_epoch(self._clock()))

    def reload_all(self) -> None:
        """Load every unloaded model again (tests and demos); energy carries on from where it was."""
        with self._lock:
            t = seconds_since_epoch(self._clock())
            for gpu in self._gpus:
                for tenant in gpu.tenants:
                    if not tenant.loaded:
                        gpu.set_loaded(tenant, True, t)
                        tenant.loaded_at = self._clock()


def _free(targets: list[tuple[_SimGpu, _Tenant]], t: float) -> None:
    """Their processes are gone: memory freed, energy carried on from t without them."""
    for gpu, tenant in targets:
        gpu.set_loaded(tenant, False, t)


def simulated_backends(count: int, gpus_per_node: int | None = None, *,
                       clock: Callable[[], datetime] | None = None,
                       fleet: Fleet | None = None) -> list[SimulatedBackend]:
    """``count`` simulated nodes: the described ones first, then synthetic ``sim-node-NNN``."""
    base = fleet or default_fleet()
    extended = extend_fleet(base, count - len(base.nodes), gpus_per_node)
    return [SimulatedBackend(node.name, fleet=extended, clock=clock)
            for node in extended.nodes[:count]]

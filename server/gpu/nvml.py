"""NvmlBackend: the node's real GPUs through NVIDIA's NVML (the ``pynvml`` module of nvidia-ml-py)."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

from gpufleet.server import __version__
from gpufleet.server.gpu.base import BackendUnavailable, GpuBackend, GpuSnapshot
from gpufleet.server.gpu.processes import HostProcess, describe_process
from gpufleet.server.schemas import (
    GpuInfo,
    GpuMemory,
    GpuProcess,
    GpuUtilization,
    MigDevice,
    NodeInfo,
    utc_now,
)

log = logging.getLogger("gpufleet.gpu")

MIB = 1024 * 1024
PSTATE_UNKNOWN = 32
T = TypeVar("T")


class _GpuLost(Exception):
    """This device answered 'GPU is lost': every reading of it is None this tick."""


def _load_pynvml() -> ModuleType:
    try:
        import pynvml
    except ImportError as exc:  # nvidia-ml-py is a dependency, but a broken install is possible
        raise BackendUnavailable(f"the NVML Python bindings do not import: {exc}") from exc
    return pynvml


class NvmlBackend(GpuBackend):
    """Reads every GPU of this node in one pass per snapshot; unsupported fields become None."""

    simulated = False

    def __init__(self, nvml_module: ModuleType | None = None, *,
                 process_lookup: Callable[[int], HostProcess] = describe_process) -> None:
        self._nvml = nvml_module if nvml_module is not None else _load_pynvml()
        self._describe_process = process_lookup
        self._lock = threading.Lock()
        self._reported: set[str] = set()  # "GPU 0: fan_speed_pct" already logged once
        self._new_warnings: list[str] = []
        self._closed = False
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise BackendUnavailable(f"NVML did not initialise: {exc}") from exc
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            self._shutdown()
            raise BackendUnavailable(f"NVML could not count GPUs: {exc}") from exc
        if count == 0:
            self._shutdown()
            raise BackendUnavailable("NVML loaded but found no NVIDIA GPU")
        # Handles stay valid for the life of the NVML session; a lost GPU gets None and a retry.
        self._handles: list[Any | None] = [self._handle(i) for i in range(count)]
        self._names: dict[int, str] = {}
        self._uuids: dict[int, str] = {}
        self._util_seen: dict[int, int] = {}  # per GPU: the newest process utilization sample (µs)
        self._node = NodeInfo(
            hostname=socket.gethostname(),
            driver_version=self._system("driver_version", nvml.nvmlSystemGetDriverVersion),
            cuda_version=self._cuda_version(),
            nvml_version=self._system("nvml_version", nvml.nvmlSystemGetNVMLVersion),
            simulated=False,
            backend="nvml",
            gpufleet_version=__version__,
        )
        log.info("NVML backend: %d GPU(s), driver %s", count, self._node.driver_version)

    # ------------------------------------------------------------ public
    @property
    def gpu_count(self) -> int:
        return len(self._handles)

    @property
    def unsupported_fields(self) -> tuple[str, ...]:
        """Every field found unsupported so far, e.g. 'GPU 0: fan_speed_pct'."""
        with self._lock:
            return tuple(sorted(self._reported))

    def snapshot(self) -> GpuSnapshot:
        with self._lock:
            if self._closed:
                raise BackendUnavailable("the NVML backend is closed")
            taken_at = utc_now()
            gpus: list[GpuInfo] = []
            processes: list[GpuProcess] = []
            for index in range(len(self._handles)):
                gpu, procs = self._read_device(index)
                gpus.append(gpu)
                processes.extend(procs)
            warnings, self._new_warnings = tuple(self._new_warnings), []
            return GpuSnapshot(taken_at=taken_at, node=self._node, gpus=tuple(gpus),
                               processes=tuple(processes), warnings=warnings)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._shutdown()

    # ------------------------------------------------------------ one device
    def _read_device(self, index: int) -> tuple[GpuInfo, list[GpuProcess]]:
        nvml = self._nvml
        handle = self._handles[index] or self._handle(index)
        self._handles[index] = handle
        if handle is None:
            return self._lost_gpu(index), []
        field = _FieldReader(self, index, handle)
        try:
            memory = field("memory", nvml.nvmlDeviceGetMemoryInfo)
            if index not in self._names:
                self._names[index] = field("name", nvml.nvmlDeviceGetName) or "NVIDIA GPU"
                self._uuids[index] = field("uuid", nvml.nvmlDeviceGetUUID)
            rates = field("utilization", nvml.nvmlDeviceGetUtilizationRates)
            power_mw = field("power_draw_w", nvml.nvmlDeviceGetPowerUsage)
            limit_mw = field("power_limit_w", nvml.nvmlDeviceGetEnforcedPowerLimit)
            energy_mj = field("energy_j", nvml.nvmlDeviceGetTotalEnergyConsumption)
            pstate = field("pstate", nvml.nvmlDeviceGetPerformanceState)
            mig = field("mig_mode", nvml.nvmlDeviceGetMigMode)
            mig_on = bool(mig and mig[0] == nvml.NVML_DEVICE_MIG_ENABLE)
            gpu = GpuInfo(
                index=index,
                name=self._names[index],
                uuid=self._uuids.get(index),
                memory=GpuMemory.from_mb(0, 0) if memory is None else GpuMemory.from_mb(
                    memory.total // MIB, memory.used // MIB, memory.free // MIB),
                utilization=GpuUtilization(
                    gpu_percent=None if rates is None else rates.gpu,
                    memory_percent=None if rates is None else rates.memory,
                ),
                temperature_c=field("temperature_c", nvml.nvmlDeviceGetTemperature,
                                    nvml.NVML_TEMPERATURE_GPU),
                power_draw_w=None if power_mw is None else round(power_mw / 1000, 3),
                power_limit_w=None if limit_mw is None else round(limit_mw / 1000, 3),
                energy_j=None if energy_mj is None else energy_mj / 1000,
                fan_speed_pct=field("fan_speed_pct", nvml.nvmlDeviceGetFanSpeed),
                sm_clock_mhz=field("sm_clock_mhz", nvml.nvmlDeviceGetClockInfo, nvml.NVML_CLOCK_SM),
                memory_clock_mhz=field("memory_clock_mhz", nvml.nvmlDeviceGetClockInfo,
                                       nvml.NVML_CLOCK_MEM),
                pstate=None if pstate is None or pstate == PSTATE_UNKNOWN else f"P{pstate}",
                mig_mode=None if mig is None else mig_on,
                mig_devices=self._mig_devices(index, handle) if mig_on else [],
            )
            procs = self._processes(index, handle, field)
            procs = self._with_sm_util(index, handle, field, procs)
        except _GpuLost:
            return self._lost_gpu(index), []
        return gpu, procs

    def _processes(self, index: int, handle: Any, field: _FieldReader) -> list[GpuProcess]:
        nvml = self._nvml
        seen: set[int] = set()
        result: list[GpuProcess] = []
        for kind, read in (("compute", nvml.nvmlDeviceGetComputeRunningProcesses),
                           ("graphics", nvml.nvmlDeviceGetGraphicsRunningProcesses)):
            for entry in field(f"{kind}_processes", read) or ():
                if entry.pid in seen:  # a PID that is both (C+G) is listed once, as compute
                    continue
                seen.add(entry.pid)
                host = self._describe_process(entry.pid)
                used = entry.usedGpuMemory
                result.append(GpuProcess(
                    pid=entry.pid,
                    name=host.name,
                    memory_mb=None if used is None else used // MIB,
                    gpu_index=index,
                    user=host.user,
                    command=host.command,
                    type=kind,
                    visible=host.visible,
                ))
        return result

    def _with_sm_util(self, index: int, handle: Any, field: _FieldReader,
                      procs: list[GpuProcess]) -> list[GpuProcess]:
        """Each process's SM utilization on this GPU: the mean of NVML's process utilization
        samples since the last snapshot (a process without one was idle: 0). Unsupported
        (MIG, vGPU, old drivers): left None, said once."""
        if not procs:
            return procs
        nvml = self._nvml

        def samples(device: Any, since: int) -> list[Any]:
            try:
                return nvml.nvmlDeviceGetProcessUtilization(device, since)
            except nvml.NVMLError_NotFound:  # no sample since then: every process was idle
                return []

        found = field("process_utilization", samples, self._util_seen.get(index, 0))
        if found is None:
            return procs
        per_pid: dict[int, list[int]] = {}
        for sample in found:
            per_pid.setdefault(sample.pid, []).append(min(int(sample.smUtil), 100))
            self._util_seen[index] = max(self._util_seen.get(index, 0), int(sample.timeStamp))
        return [p.model_copy(update={"sm_util_pct": round(sum(v) / len(v)) if (v := per_pid.get(p.pid))
                                     else 0}) for p in procs]

    def _mig_devices(self, index: int, handle: Any) -> list[MigDevice]:
        nvml = self._nvml
        field = _FieldReader(self, index, handle)
        devices: list[MigDevice] = []
        for slot in range(field("mig_devices", nvml.nvmlDeviceGetMaxMigDeviceCount) or 0):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except nvml.NVMLError_NotFound:
                continue  # an empty slot: no instance was created there
            except nvml.NVMLError_GpuIsLost as exc:
                raise _GpuLost from exc
            except nvml.NVMLError as exc:  # one MIG slot's problem, never the snapshot's
                self._warn_once(index, f"MIG device {slot} ({exc})")
                continue
            mig_field = _FieldReader(self, index, mig)
            memory = mig_field("mig_memory", nvml.nvmlDeviceGetMemoryInfo)
            devices.append(MigDevice(
                index=slot,
                uuid=mig_field("mig_uuid", nvml.nvmlDeviceGetUUID),
                name=mig_field("mig_name", nvml.nvmlDeviceGetName),
                memory_total_mb=None if memory is None else memory.total // MIB,
                memory_used_mb=None if memory is None else memory.used // MIB,
            ))
        return devices

    def _lost_gpu(self, index: int) -> GpuInfo:
        self._warn_once(index, "GPU is lost")
        return GpuInfo(
            index=index,
            name=self._names.get(index, "NVIDIA GPU (lost)"),
            uuid=self._uuids.get(index),
            memory=GpuMemory.from_mb(0, 0),
            utilization=GpuUtilization(),
            lost=True,
        )

    # ------------------------------------------------------------ helpers
    def _handle(self, index: int) -> Any | None:
        try:
            return self._nvml.nvmlDeviceGetHandleByIndex(index)
        except self._nvml.NVMLError_GpuIsLost:
            return None  # reported by _lost_gpu
        except self._nvml.NVMLError as exc:
            self._warn_once(index, f"no handle ({exc})")
            return None

    def _system(self, label: str, read: Callable[[], T]) -> T | None:
        try:
            return read()
        except self._nvml.NVMLError as exc:
            log.warning("NVML %s unavailable: %s", label, exc)
            return None

    def _cuda_version(self) -> str | None:
        version = self._system("cuda_version", self._nvml.nvmlSystemGetCudaDriverVersion)
        if version is None:
            return None
        # NVML encodes CUDA 12.4 as 12040.
        return f"{version // 1000}.{(version % 1000) // 10}"

    def _warn_once(self, index: int, what: str) -> None:
        key = f"GPU {index}: {what}"
        if key not in self._reported:
            self._reported.add(key)
            self._new_warnings.append(key)
            log.warning("%s", key)

    def _shutdown(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as exc:
            log.debug("nvmlShutdown: %s", exc)


class _FieldReader:
    """Reads one field of one device: unsupported or forbidden -> None (reported once)."""

    __slots__ = ("_backend", "_handle", "_index")

    def __init__(self, backend: NvmlBackend, index: int, handle: Any) -> None:
        self._backend = backend
        self._index = index
        self._handle = handle

    def __call__(self, label: str, read: Callable[..., T], *args: Any) -> T | None:
        nvml = self._backend._nvml
        try:
            return read(self._handle, *args)
        except nvml.NVMLError_GpuIsLost as exc:
            raise _GpuLost from exc
        except (nvml.NVMLError_NotSupported, nvml.NVMLError_NoPermission):
            self._backend._warn_once(self._index, label)
            return None
        except nvml.NVMLError as exc:
            # Anything else (timeout, unknown) is one field's problem, not the snapshot's.
            self._backend._warn_once(self._index, f"{label} ({exc})")
            return None

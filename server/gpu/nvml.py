"""NvmlBackend: the node's real GPUs through NVIDIA's NVML (the ``pynvml`` module of nvidia-ml-py)."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

from gpufleet.server import __version__
from gpufleet.server.gpu import nvml_health as health
from gpufleet.server.gpu.base import BackendUnavailable, GpuBackend, GpuSnapshot
from gpufleet.server.gpu.nvml_processes import NoProcessCall, ProcessListCalls
from gpufleet.server.gpu.nvml_watch import NvmlWatcher
from gpufleet.server.gpu.processes import HostProcess, ProcessInspector
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


# One process entry as NVML listed it, before the host's view of its PID is added.
_Listed = tuple[int, str, Any]  # GPU index, "compute" | "graphics", the NVML struct


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
                 inspector: ProcessInspector | None = None,
                 watcher: Callable[[ModuleType, list[Any | None]], NvmlWatcher] | None = None
                 ) -> None:
        """``inspector`` reads the host's side of GPU PIDs; ``watcher`` builds the XID/PCIe thread."""
        self._nvml = nvml_module if nvml_module is not None else _load_pynvml()
        self._inspector = inspector or ProcessInspector()
        self._lock = threading.Lock()
        self._reported: set[str] = set()  # "GPU 0: fan_speed_pct" already logged once
        self._new_warnings: list[str] = []
        self._quiet_new: dict[int, list[str]] = {}  # health fields first found missing, per GPU
        self._skip: set[tuple[int, str]] = set()  # health reads this GPU does not support
        self._chosen: dict[tuple[int, str], Callable[..., Any]] = {}  # the call that worked
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
        self._max_links: dict[int, tuple[int | None, int | None]] = {}
        self._process_calls = ProcessListCalls(nvml)
        self._util_seen: dict[int, int] = {}  # per GPU: the newest process utilization sample (µs)
        self._sm_now: dict[int, dict[int, int]] = {}  # this snapshot: per GPU, PID -> SM %
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
        self._watcher = (watcher or NvmlWatcher)(nvml, list(self._handles))
        self._watcher.start()

    # ------------------------------------------------------------ public
    @property
    def gpu_count(self) -> int:
        return len(self._handles)

    @property
    def unsupported_fields(self) -> tuple[str, ...]:
        """Every field found unsupported so far, e.g. 'GPU 0: fan_speed_pct'."""
        with self._lock:
            return tuple(sorted(self._reported))

    @property
    def watcher(self) -> NvmlWatcher:
        return self._watcher

    def snapshot(self) -> GpuSnapshot:
        with self._lock:
            if self._closed:
                raise BackendUnavailable("the NVML backend is closed")
            taken_at = utc_now()
            gpus: list[GpuInfo] = []
            listed: list[_Listed] = []
            for index in range(len(self._handles)):
                gpu, procs = self._read_device(index)
                gpus.append(gpu)
                listed.extend(procs)
            # /proc after every GPU's list, in one pass: PIDs are read once however many GPUs they use.
            hosts = self._inspector.describe({entry.pid for _, _, entry in listed})
            processes = [_process(index, kind, entry, hosts[entry.pid])
                         for index, kind, entry in listed]
            processes = self._with_sm_util(processes)
            self._log_quiet()
            warnings, self._new_warnings = tuple(self._new_warnings), []
            return GpuSnapshot(taken_at=taken_at, node=self._node, gpus=tuple(gpus),
                               processes=tuple(processes), warnings=warnings)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._watcher.close()
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
            # No MIG on this GPU is normal (every GPU before Ampere): None, and nothing to say.
            mig = field("mig_mode", nvml.nvmlDeviceGetMigMode, silent=True)
            mig_on = bool(mig and mig[0] == nvml.NVML_DEVICE_MIG_ENABLE)
            if index not in self._max_links:
                self._max_links[index] = health.max_pcie_link(field, nvml)
            xids = self._watcher.xids(index)
            if xids is None:
                field.note_unsupported("xid_errors")
            gpu = GpuInfo(
                index=index,
                name=self._names[index],
                uuid=self._uuids.get(index),
                memory=GpuMemory.from_mb(0, 0) if memory is None else GpuMemory.from_mb(
                    memory.total // MIB, memory.used // MIB, memory.free // MIB),
                utilization=GpuUtilization(
                    gpu_percent=None if rates is None else rates.gpu,
                    memory_percent=None if rates is None else rates.memory,
                    encoder_percent=health.engine_percent(field, "encoder_percent",
                                                          nvml.nvmlDeviceGetEncoderUtilization),
                    decoder_percent=health.engine_percent(field, "decoder_percent",
                                                          nvml.nvmlDeviceGetDecoderUtilization),
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
                throttle_reasons=health.throttle_reasons(field, nvml),
                ecc_errors=health.ecc_errors(field, nvml),
                retired_pages=health.retired_pages(field, nvml),
                remapped_rows=health.remapped_rows(field, nvml),
                pcie=health.pcie(field, nvml, self._watcher.pcie_throughput(index),
                                 self._max_links[index]),
                xid_errors=None if xids is None else xids[0],
                xid_error_count=None if xids is None else xids[1],
            )
            procs = self._processes(index, handle, field)
            self._read_sm_util(index, handle, field, procs)
        except _GpuLost:
            return self._lost_gpu(index), []
        return gpu, procs

    def _processes(self, index: int, handle: Any, field: _FieldReader) -> list[_Listed]:
        calls = self._process_calls
        first_version = calls.version
        seen: set[int] = set()
        result: list[_Listed] = []
        for kind, read in (("compute", calls.compute), ("graphics", calls.graphics)):
            for entry in field(f"{kind}_processes", read) or ():
                if entry.pid in seen:  # a PID that is both (C+G) is listed once, as compute
                    continue
                seen.add(entry.pid)
                result.append((index, kind, entry))
        if calls.version != first_version:  # the driver's process call is now known: say which
            self._node = self._node.model_copy(update={"nvml_process_api": calls.version})
        return result

    def _read_sm_util(self, index: int, handle: Any, field: _FieldReader, procs: list[_Listed]) -> None:
        """Each listed process's SM utilization on this GPU: the mean of NVML's process
        utilization samples since the last snapshot (a process without one was idle: 0).
        Unsupported (MIG, vGPU, old drivers): none, said once."""
        if not procs:
            return
        nvml = self._nvml

        def samples(device: Any, since: int) -> list[Any]:
            try:
                return nvml.nvmlDeviceGetProcessUtilization(device, since)
            except nvml.NVMLError_NotFound:  # no sample since then: every process was idle
                return []

        found = field("process_utilization", samples, self._util_seen.get(index, 0))
        if found is None:
            return
        per_pid: dict[int, list[int]] = {}
        for sample in found:
            per_pid.setdefault(sample.pid, []).append(min(int(sample.smUtil), 100))
            self._util_seen[index] = max(self._util_seen.get(index, 0), int(sample.timeStamp))
        self._sm_now[index] = {entry.pid: round(sum(v) / len(v)) if (v := per_pid.get(entry.pid)) else 0
                               for _, _, entry in procs}

    def _with_sm_util(self, processes: list[GpuProcess]) -> list[GpuProcess]:
        """The processes with the SM utilization this snapshot read (``_read_sm_util``)."""
        sm, self._sm_now = self._sm_now, {}
        return [p.model_copy(update={"sm_util_pct": sm[p.gpu_index][p.pid]})
                if p.gpu_index in sm and p.pid in sm[p.gpu_index] else p for p in processes]

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
        xids = self._watcher.xids(index)  # XID 79 ("fallen off the bus") says why
        return GpuInfo(
            index=index,
            name=self._names.get(index, "NVIDIA GPU (lost)"),
            uuid=self._uuids.get(index),
            memory=GpuMemory.from_mb(0, 0),
            utilization=GpuUtilization(),
            lost=True,
            xid_errors=None if xids is None else xids[0],
            xid_error_count=None if xids is None else xids[1],
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

    def _note_quiet(self, index: int, label: str) -> None:
        key = f"GPU {index}: {label}"
        if key not in self._reported:
            self._reported.add(key)
            self._quiet_new.setdefault(index, []).append(label)

    def _log_quiet(self) -> None:
        """One INFO line per GPU for health fields it does not report (normal; not a warning)."""
        for index, labels in sorted(self._quiet_new.items()):
            name = self._names.get(index, "GPU")
            log.info("GPU %d (%s) does not report: %s", index, name, ", ".join(labels))
        self._quiet_new = {}

    def _shutdown(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as exc:
            log.debug("nvmlShutdown: %s", exc)


class _FieldReader:
    """Reads one field of one device: unsupported or forbidden -> None (reported once).

    ``quiet`` fields (health) that the GPU does not support are noted in one INFO line
    and not asked again; ``silent`` ones (MIG mode) are not reported at all.
    """

    __slots__ = ("_backend", "_handle", "_index")

    def __init__(self, backend: NvmlBackend, index: int, handle: Any) -> None:
        self._backend = backend
        self._index = index
        self._handle = handle

    def __call__(self, label: str, read: Callable[..., T] | None, *args: Any,
                 quiet: bool = False, silent: bool = False) -> T | None:
        backend = self._backend
        if quiet and (self._index, label) in backend._skip:
            return None
        nvml = backend._nvml
        try:
            if read is None:  # this nvidia-ml-py does not wrap the call at all
                raise nvml.NVMLError(nvml.NVML_ERROR_FUNCTION_NOT_FOUND)
            return read(self._handle, *args)
        except nvml.NVMLError_GpuIsLost as exc:
            raise _GpuLost from exc
        except (nvml.NVMLError_NotSupported, nvml.NVMLError_NoPermission,
                nvml.NVMLError_FunctionNotFound) as exc:
            if silent:
                return None
            if quiet:
                backend._skip.add((self._index, label))
                self.note_unsupported(label)
            elif isinstance(exc, nvml.NVMLError_FunctionNotFound):
                backend._warn_once(self._index, f"{label} ({exc})")
            else:
                backend._warn_once(self._index, label)
            return None
        except NoProcessCall as exc:
            backend._warn_once(self._index, f"{label} ({exc})")
            return None
        except nvml.NVMLError as exc:
            # Anything else (timeout, unknown) is one field's problem, not the snapshot's.
            backend._warn_once(self._index, f"{label} ({exc})")
            return None

    def first(self, label: str, reads: list[Callable[..., T] | None], *args: Any,
              quiet: bool = False) -> T | None:
        """The first of ``reads`` (newest call first) that this driver has."""
        backend = self._backend
        chosen = backend._chosen.get((self._index, label))
        if chosen is not None:
            return self(label, chosen, *args, quiet=quiet)
        nvml = backend._nvml
        for read in reads:
            if read is None:
                continue
            try:
                value = read(self._handle, *args)
            except nvml.NVMLError_FunctionNotFound:
                continue
            except nvml.NVMLError:
                return self(label, read, *args, quiet=quiet)  # reported (or lost) as any field
            backend._chosen[(self._index, label)] = read
            return value
        return self(label, None, quiet=quiet)

    def note_unsupported(self, label: str) -> None:
        self._backend._note_quiet(self._index, label)


def _process(index: int, kind: str, entry: Any, host: HostProcess) -> GpuProcess:
    used = entry.usedGpuMemory
    return GpuProcess(
        pid=entry.pid,
        name=host.name,
        memory_mb=None if used is None else used // MIB,
        gpu_index=index,
        user=host.user,
        command=host.command,
        type=kind,  # type: ignore[arg-type]
        visible=host.visible,
        cpu_percent=host.cpu_percent,
        host_rss_mb=host.host_rss_mb,
        started_at=host.started_at,
        elapsed_s=host.elapsed_s,
        cgroup=host.cgroup,
        container_id=host.container_id,
        children=None if host.children is None else list(host.children),
    )

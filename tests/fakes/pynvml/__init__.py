"""A faithful fake of nvidia-ml-py's ``pynvml`` for machines without an NVIDIA driver.

Same function names, constants, error classes (``NVMLError`` subclasses chosen by
code in ``NVMLError.__new__``), struct field names and units (bytes, mW, mJ, MHz)
as the real module; only the devices are made up.  Tests describe the devices with
``FakeGpu`` and call ``configure(...)``; ``reset()`` puts the module back to an
empty, uninitialised state.  ``calls`` counts every API call by name so tests can
assert that handles are cached and ``nvmlInit`` runs once.
"""

from __future__ import annotations

import string
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from ctypes import Structure, c_uint, c_ulonglong
from dataclasses import dataclass, field

# ---------------------------------------------------------------- constants
NVML_FEATURE_DISABLED = 0
NVML_FEATURE_ENABLED = 1
NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_GRAPHICS = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_CLOCK_VIDEO = 3
NVML_PSTATE_0 = 0
NVML_PSTATE_2 = 2
NVML_PSTATE_8 = 8
NVML_PSTATE_15 = 15
NVML_PSTATE_UNKNOWN = 32
NVML_DEVICE_MIG_DISABLE = 0x0
NVML_DEVICE_MIG_ENABLE = 0x1

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_INSUFFICIENT_POWER = 8
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_CORRUPTED_INFOROM = 14
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_OPERATING_SYSTEM = 17
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_IN_USE = 19
NVML_ERROR_MEMORY = 20
NVML_ERROR_NO_DATA = 21
NVML_ERROR_UNKNOWN = 999


# ---------------------------------------------------------------- errors
class NVMLError(Exception):
    """As in pynvml: ``NVMLError(code)`` returns an instance of the code's subclass."""

    _valClassMapping: dict[int, type] = {}
    _errcode_to_string = {
        NVML_ERROR_UNINITIALIZED: "Uninitialized",
        NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
        NVML_ERROR_NOT_SUPPORTED: "Not Supported",
        NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
        NVML_ERROR_ALREADY_INITIALIZED: "Already Initialized",
        NVML_ERROR_NOT_FOUND: "Not Found",
        NVML_ERROR_INSUFFICIENT_SIZE: "Insufficient Size",
        NVML_ERROR_INSUFFICIENT_POWER: "Insufficient External Power",
        NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
        NVML_ERROR_TIMEOUT: "Timeout",
        NVML_ERROR_IRQ_ISSUE: "Interrupt Request Issue",
        NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
        NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
        NVML_ERROR_CORRUPTED_INFOROM: "Corrupted infoROM",
        NVML_ERROR_GPU_IS_LOST: "GPU is lost",
        NVML_ERROR_RESET_REQUIRED: "GPU requires restart",
        NVML_ERROR_OPERATING_SYSTEM: "The operating system has blocked the request.",
        NVML_ERROR_LIB_RM_VERSION_MISMATCH: "RM has detected an NVML/RM version mismatch.",
        NVML_ERROR_MEMORY: "Insufficient Memory",
        NVML_ERROR_UNKNOWN: "Unknown Error",
    }

    def __new__(typ, value):
        if typ == NVMLError:
            typ = NVMLError._valClassMapping.get(value, typ)
        obj = Exception.__new__(typ)
        obj.value = value
        return obj

    def __str__(self):
        return NVMLError._errcode_to_string.get(self.value, f"NVML Error with code {self.value}")

    def __eq__(self, other):
        return self.value == other.value

    __hash__ = Exception.__hash__


def _extractNVMLErrorsAsClasses():
    this_module = sys.modules[__name__]
    for err_name in [x for x in dir(this_module) if x.startswith("NVML_ERROR_")]:
        class_name = "NVMLError_" + string.capwords(
            err_name.replace("NVML_ERROR_", ""), "_").replace("_", "")
        err_val = getattr(this_module, err_name)

        def gen_new(val):
            def new(typ, *args):
                return NVMLError.__new__(typ, val)
            return new

        new_error_class = type(class_name, (NVMLError,), {"__new__": gen_new(err_val)})
        new_error_class.__module__ = __name__
        setattr(this_module, class_name, new_error_class)
        NVMLError._valClassMapping[err_val] = new_error_class


_extractNVMLErrorsAsClasses()


def nvmlExceptionClass(nvmlErrorCode):
    if nvmlErrorCode not in NVMLError._valClassMapping:
        raise ValueError(f"nvmlErrorCode {nvmlErrorCode} is not valid")
    return NVMLError._valClassMapping[nvmlErrorCode]


# ---------------------------------------------------------------- structs
class c_nvmlMemory_t(Structure):
    _fields_ = [("total", c_ulonglong), ("free", c_ulonglong), ("used", c_ulonglong)]


class c_nvmlUtilization_t(Structure):
    _fields_ = [("gpu", c_uint), ("memory", c_uint)]


class c_nvmlProcessUtilizationSample_t(Structure):
    _fields_ = [("pid", c_uint), ("timeStamp", c_ulonglong), ("smUtil", c_uint), ("memUtil", c_uint),
                ("encUtil", c_uint), ("decUtil", c_uint)]


class nvmlFriendlyObject:
    """What pynvml turns process structs into: plain attributes."""

    def __init__(self, dictionary):
        for key in dictionary:
            setattr(self, key, dictionary[key])

    def __str__(self):
        return self.__dict__.__str__()


class c_nvmlDevice_t:
    """An opaque device handle (a pointer in the real module)."""

    def __init__(self, gpu: FakeGpu, mig: FakeMigDevice | None = None):
        self._gpu = gpu
        self._mig = mig

    def __repr__(self):
        return f"<c_nvmlDevice_t {self._gpu.uuid}{'/' + self._mig.uuid if self._mig else ''}>"


# ---------------------------------------------------------------- fake devices
MiB = 1024 * 1024


@dataclass
class FakeProcess:
    pid: int
    used_mib: int | None  # None: the driver cannot say (WDDM)
    gpu_instance_id: int = 0xFFFFFFFF
    compute_instance_id: int = 0xFFFFFFFF
    # nvmlDeviceGetProcessUtilization: this process's SM %, in one sample stamped with its
    # GPU's ``util_sample_us`` (None: the driver holds no sample of it)
    sm_util: int | None = None


@dataclass
class FakeMigDevice:
    uuid: str
    name: str
    total_mib: int
    used_mib: int


@dataclass
class FakeGpu:
    """One GPU as the driver would report it. Units as NVML: bytes, mW, mJ, MHz."""

    name: str = "NVIDIA A100-SXM4-80GB"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    total_mib: int = 81920
    used_mib: int = 0
    util_gpu: int = 0
    util_memory: int = 0
    temperature_c: int = 35
    power_mw: int = 60000
    power_limit_mw: int = 400000
    energy_mj: int = 1_000_000
    fan_pct: int = 30
    sm_clock_mhz: int = 1410
    mem_clock_mhz: int = 1593
    pstate: int = NVML_PSTATE_0
    mig_mode: int | None = NVML_DEVICE_MIG_DISABLE  # None: MIG not supported
    mig_devices: list[FakeMigDevice] = field(default_factory=list)
    max_mig_devices: int = 7
    compute_processes: list[FakeProcess] = field(default_factory=list)
    graphics_processes: list[FakeProcess] = field(default_factory=list)
    # function names (e.g. "nvmlDeviceGetFanSpeed") that answer NotSupported / NoPermission
    not_supported: set[str] = field(default_factory=set)
    no_permission: set[str] = field(default_factory=set)
    lost: bool = False  # every query on this device raises NVMLError_GpuIsLost
    util_sample_us: int = 1_000_000  # CPU timestamp (µs) of the processes' utilization samples

    @property
    def handle(self) -> c_nvmlDevice_t:
        return _handle_for(self)


class _State:
    def __init__(self) -> None:
        self.gpus: list[FakeGpu] = []
        self.initialised = 0
        self.init_error: int | None = None  # e.g. NVML_ERROR_LIBRARY_NOT_FOUND
        self.driver_version = "550.54.15"
        self.nvml_version = "12.550.54.15"
        self.cuda_driver_version = 12040
        self.handles: dict[int, c_nvmlDevice_t] = {}


_state = _State()
_lock = threading.Lock()
calls: Counter[str] = Counter()


def reset() -> None:
    """Back to no devices, not initialised, no recorded calls."""
    global _state
    _state = _State()
    calls.clear()


def configure(gpus: list[FakeGpu], *, init_error: int | None = None,
              driver_version: str = "550.54.15", cuda_driver_version: int = 12040,
              nvml_version: str = "12.550.54.15") -> None:
    """Describe the node's devices (and whether nvmlInit fails, and with which code)."""
    reset()
    _state.gpus = list(gpus)
    _state.init_error = init_error
    _state.driver_version = driver_version
    _state.cuda_driver_version = cuda_driver_version
    _state.nvml_version = nvml_version


def set_processes(index: int, compute: Sequence[FakeProcess] = (),
                  graphics: Sequence[FakeProcess] = ()) -> None:
    """Replace the processes the driver reports on GPU ``index`` (a configured device)."""
    with _lock:
        gpu = _state.gpus[index]
        gpu.compute_processes = list(compute)
        gpu.graphics_processes = list(graphics)


def _handle_for(gpu: FakeGpu) -> c_nvmlDevice_t:
    return _state.handles.setdefault(id(gpu), c_nvmlDevice_t(gpu))


def _record(name: str) -> None:
    with _lock:
        calls[name] += 1
    if not _state.initialised:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)


def _device(name: str, handle: c_nvmlDevice_t) -> FakeGpu:
    _record(name)
    if not isinstance(handle, c_nvmlDevice_t):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    gpu = handle._gpu
    if gpu.lost:
        raise NVMLError(NVML_ERROR_GPU_IS_LOST)
    if name in gpu.not_supported:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    if name in gpu.no_permission:
        raise NVMLError(NVML_ERROR_NO_PERMISSION)
    return gpu


# ---------------------------------------------------------------- library
def nvmlInitWithFlags(flags):
    with _lock:
        calls["nvmlInit"] += 1
    if _state.init_error is not None:
        raise NVMLError(_state.init_error)
    _state.initialised += 1


def nvmlInit():
    nvmlInitWithFlags(0)


def nvmlShutdown():
    _record("nvmlShutdown")
    _state.initialised -= 1


def nvmlErrorString(result):
    return NVMLError._errcode_to_string.get(result, "Unknown Error")


def nvmlSystemGetDriverVersion():
    _record("nvmlSystemGetDriverVersion")
    return _state.driver_version


def nvmlSystemGetNVMLVersion():
    _record("nvmlSystemGetNVMLVersion")
    return _state.nvml_version


def nvmlSystemGetCudaDriverVersion():
    _record("nvmlSystemGetCudaDriverVersion")
    return _state.cuda_driver_version


def nvmlSystemGetCudaDriverVersion_v2():
    return nvmlSystemGetCudaDriverVersion()


def nvmlDeviceGetCount():
    _record("nvmlDeviceGetCount")
    return len(_state.gpus)


def nvmlDeviceGetHandleByIndex(index):
    _record("nvmlDeviceGetHandleByIndex")
    if not 0 <= index < len(_state.gpus):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    gpu = _state.gpus[index]
    if gpu.lost:
        raise NVMLError(NVML_ERROR_GPU_IS_LOST)
    return _handle_for(gpu)


def nvmlDeviceGetIndex(handle):
    gpu = _device("nvmlDeviceGetIndex", handle)
    return _state.gpus.index(gpu)


def nvmlDeviceGetName(handle):
    gpu = _device("nvmlDeviceGetName", handle)
    return handle._mig.name if handle._mig else gpu.name


def nvmlDeviceGetUUID(handle):
    gpu = _device("nvmlDeviceGetUUID", handle)
    return handle._mig.uuid if handle._mig else gpu.uuid


def nvmlDeviceGetMemoryInfo(handle, version=None):
    gpu = _device("nvmlDeviceGetMemoryInfo", handle)
    total, used = (handle._mig.total_mib, handle._mig.used_mib) if handle._mig else (
        gpu.total_mib, gpu.used_mib)
    return c_nvmlMemory_t(total=total * MiB, free=(total - used) * MiB, used=used * MiB)


def nvmlDeviceGetUtilizationRates(handle):
    gpu = _device("nvmlDeviceGetUtilizationRates", handle)
    if gpu.mig_mode == NVML_DEVICE_MIG_ENABLE:
        # As the real driver: no whole-GPU utilization while MIG is on.
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return c_nvmlUtilization_t(gpu=gpu.util_gpu, memory=gpu.util_memory)


def nvmlDeviceGetTemperature(handle, sensor):
    gpu = _device("nvmlDeviceGetTemperature", handle)
    if sensor != NVML_TEMPERATURE_GPU:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return gpu.temperature_c


def nvmlDeviceGetPowerUsage(handle):
    return _device("nvmlDeviceGetPowerUsage", handle).power_mw


def nvmlDeviceGetEnforcedPowerLimit(handle):
    return _device("nvmlDeviceGetEnforcedPowerLimit", handle).power_limit_mw


def nvmlDeviceGetPowerManagementLimit(handle):
    return _device("nvmlDeviceGetPowerManagementLimit", handle).power_limit_mw


def nvmlDeviceGetTotalEnergyConsumption(handle):
    return _device("nvmlDeviceGetTotalEnergyConsumption", handle).energy_mj


def nvmlDeviceGetFanSpeed(handle):
    return _device("nvmlDeviceGetFanSpeed", handle).fan_pct


def nvmlDeviceGetClockInfo(handle, type):
    gpu = _device("nvmlDeviceGetClockInfo", handle)
    if type in (NVML_CLOCK_SM, NVML_CLOCK_GRAPHICS):
        return gpu.sm_clock_mhz
    if type == NVML_CLOCK_MEM:
        return gpu.mem_clock_mhz
    raise NVMLError(NVML_ERROR_NOT_SUPPORTED)


def nvmlDeviceGetPerformanceState(handle):
    return _device("nvmlDeviceGetPerformanceState", handle).pstate


def nvmlDeviceGetPowerState(handle):
    return nvmlDeviceGetPerformanceState(handle)


def nvmlDeviceGetMigMode(device):
    gpu = _device("nvmlDeviceGetMigMode", device)
    if gpu.mig_mode is None:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return [gpu.mig_mode, gpu.mig_mode]


def nvmlDeviceGetMaxMigDeviceCount(device):
    gpu = _device("nvmlDeviceGetMaxMigDeviceCount", device)
    if gpu.mig_mode is None:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return gpu.max_mig_devices


def nvmlDeviceGetMigDeviceHandleByIndex(device, index):
    gpu = _device("nvmlDeviceGetMigDeviceHandleByIndex", device)
    if gpu.mig_mode != NVML_DEVICE_MIG_ENABLE:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    if not 0 <= index < gpu.max_mig_devices:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    if index >= len(gpu.mig_devices):
        raise NVMLError(NVML_ERROR_NOT_FOUND)  # an empty MIG slot
    return c_nvmlDevice_t(gpu, gpu.mig_devices[index])


def nvmlDeviceIsMigDeviceHandle(device):
    _device("nvmlDeviceIsMigDeviceHandle", device)
    return c_uint(1 if device._mig else 0)


def _process_objects(processes: list[FakeProcess]) -> list[nvmlFriendlyObject]:
    return [
        nvmlFriendlyObject({
            "pid": p.pid,
            "usedGpuMemory": None if p.used_mib is None else p.used_mib * MiB,
            "gpuInstanceId": p.gpu_instance_id,
            "computeInstanceId": p.compute_instance_id,
        })
        for p in processes
    ]


def nvmlDeviceGetComputeRunningProcesses(handle):
    return _process_objects(_device("nvmlDeviceGetComputeRunningProcesses", handle).compute_processes)


def nvmlDeviceGetGraphicsRunningProcesses(handle):
    return _process_objects(_device("nvmlDeviceGetGraphicsRunningProcesses", handle).graphics_processes)


def nvmlDeviceGetProcessUtilization(handle, timeStamp):
    """As the driver: samples newer than ``timeStamp`` (µs), NotFound when there are none,
    NotSupported in MIG mode."""
    gpu = _device("nvmlDeviceGetProcessUtilization", handle)
    if gpu.mig_mode == NVML_DEVICE_MIG_ENABLE:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    samples = [c_nvmlProcessUtilizationSample_t(pid=p.pid, timeStamp=gpu.util_sample_us, smUtil=p.sm_util,
                                                memUtil=0, encUtil=0, decUtil=0)
               for p in gpu.compute_processes + gpu.graphics_processes
               if p.sm_util is not None and gpu.util_sample_us > timeStamp]
    if not samples:
        raise NVMLError(NVML_ERROR_NOT_FOUND)
    return samples


nvmlDeviceGetComputeRunningProcesses_v3 = nvmlDeviceGetComputeRunningProcesses
nvmlDeviceGetGraphicsRunningProcesses_v3 = nvmlDeviceGetGraphicsRunningProcesses

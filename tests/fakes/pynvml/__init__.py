"""A faithful fake of nvidia-ml-py's ``pynvml`` for machines without an NVIDIA driver.

Same function names, constants, error classes (``NVMLError`` subclasses chosen by
code in ``NVMLError.__new__``), struct field names and units (bytes, mW, mJ, MHz)
as the real module; only the devices are made up.  Tests describe the devices with
``FakeGpu`` and call ``configure(...)``; ``reset()`` puts the module back to an
empty, uninitialised state.  ``calls`` counts every API call by name so tests can
assert that handles are cached and ``nvmlInit`` runs once.

The driver side is modelled where gpufleet depends on it: an older driver lacks C
symbols (``configure(missing_functions=DRIVER_R470)``), so the versioned wrappers
raise ``NVMLError_FunctionNotFound`` as the real ones do, the unversioned process
calls raise ``NVMLLibraryMismatchError``, and ``_nvmlGetFunctionPointer`` hands out
the process-list entry points with their C calling convention (count in/out, an
array of structs, a return code).  XID events are queued with ``inject_xid`` and
delivered by ``nvmlEventSetWait_v2``, which blocks up to its timeout like the real one.
"""

from __future__ import annotations

import string
import sys
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from ctypes import Structure, byref, c_uint, c_ulonglong
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
NVML_VOLATILE_ECC = 0
NVML_AGGREGATE_ECC = 1
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS = 0
NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR = 1
NVML_PCIE_UTIL_TX_BYTES = 0
NVML_PCIE_UTIL_RX_BYTES = 1
NVML_VALUE_NOT_AVAILABLE_ulonglong = c_ulonglong(-1)

nvmlClocksEventReasonGpuIdle = 0x0000000000000001
nvmlClocksEventReasonApplicationsClocksSetting = 0x0000000000000002
nvmlClocksEventReasonSwPowerCap = 0x0000000000000004
nvmlClocksEventReasonHwSlowdown = 0x0000000000000008
nvmlClocksEventReasonSyncBoost = 0x0000000000000010
nvmlClocksEventReasonSwThermalSlowdown = 0x0000000000000020
nvmlClocksEventReasonHwThermalSlowdown = 0x0000000000000040
nvmlClocksEventReasonHwPowerBrakeSlowdown = 0x0000000000000080
nvmlClocksEventReasonDisplayClockSetting = 0x0000000000000100
nvmlClocksEventReasonNone = 0x0000000000000000
nvmlClocksThrottleReasonGpuIdle = nvmlClocksEventReasonGpuIdle
nvmlClocksThrottleReasonSwPowerCap = nvmlClocksEventReasonSwPowerCap
nvmlClocksThrottleReasonHwSlowdown = nvmlClocksEventReasonHwSlowdown
nvmlClocksThrottleReasonSwThermalSlowdown = nvmlClocksEventReasonSwThermalSlowdown
nvmlClocksThrottleReasonHwThermalSlowdown = nvmlClocksEventReasonHwThermalSlowdown

nvmlEventTypeSingleBitEccError = 0x0000000000000001
nvmlEventTypeDoubleBitEccError = 0x0000000000000002
nvmlEventTypePState = 0x0000000000000004
nvmlEventTypeXidCriticalError = 0x0000000000000008
nvmlEventTypeClock = 0x0000000000000010
nvmlEventTypeNone = 0x0000000000000000

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


class NVMLLibraryMismatchError(Exception):
    """pynvml's unversioned wrappers raise this when the driver lacks the newest symbol."""


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


class _c_nvmlProcessInfo_v1_t(Structure):
    """The original process struct; pynvml no longer ships it, drivers before R450 still use it."""

    _fields_ = [("pid", c_uint), ("usedGpuMemory", c_ulonglong)]


class c_nvmlProcessInfo_v2_t(Structure):
    _fields_ = [("pid", c_uint), ("usedGpuMemory", c_ulonglong), ("gpuInstanceId", c_uint),
                ("computeInstanceId", c_uint)]


c_nvmlProcessInfo_v3_t = c_nvmlProcessInfo_v2_t  # as in nvidia-ml-py 12 and 13


class c_nvmlEventData_t:
    """An event as nvmlEventSetWait_v2 returns it (a ctypes struct holding a device pointer)."""

    _fields_ = [("device", object), ("eventType", object), ("eventData", object),
                ("gpuInstanceId", object), ("computeInstanceId", object)]

    def __init__(self, device, eventType, eventData, gpuInstanceId=0xFFFFFFFF,
                 computeInstanceId=0xFFFFFFFF):
        self.device = device
        self.eventType = eventType
        self.eventData = eventData
        self.gpuInstanceId = gpuInstanceId
        self.computeInstanceId = computeInstanceId


class nvmlFriendlyObject:
    """What pynvml turns process structs into: plain attributes."""

    def __init__(self, dictionary):
        for key in dictionary:
            setattr(self, key, dictionary[key])

    def __str__(self):
        return self.__dict__.__str__()


def nvmlStructToFriendlyObject(struct):
    return nvmlFriendlyObject({name: getattr(struct, name) for name, _ in struct._fields_})


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
    # health (issue 14); defaults are an A100's: ECC on, rows remapped instead of pages retired
    clocks_event_reasons: int = nvmlClocksEventReasonNone
    ecc_volatile: tuple[int, int] = (0, 0)  # (corrected, uncorrected)
    ecc_aggregate: tuple[int, int] = (0, 0)
    retired_pages_sbe: list[int] | None = None  # page addresses; None: NotSupported (Ampere+)
    retired_pages_dbe: list[int] | None = None
    retired_pages_pending: bool = False
    remapped_rows: tuple[int, int, int, int] | None = (0, 0, 0, 0)  # corr, unc, pending, failure
    pcie_tx_kb_s: int = 1_200
    pcie_rx_kb_s: int = 3_400
    pcie_link: tuple[int, int] = (4, 16)  # current generation, width
    pcie_max_link: tuple[int, int] = (4, 16)
    encoder_util: int = 0
    decoder_util: int = 0
    xid_events: bool = True  # the device can deliver nvmlEventTypeXidCriticalError
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
        self.missing_functions: frozenset[str] = frozenset()  # C symbols this driver lacks
        self.event_sets: list[_FakeEventSet] = []
        self.after_process_list: Callable[[str, list[int]], None] | None = None


_state = _State()
_lock = threading.Lock()
calls: Counter[str] = Counter()


def reset() -> None:
    """Back to no devices, not initialised, no recorded calls (an event wait in flight ends)."""
    global _state
    with _lock:
        for event_set in _state.event_sets:
            event_set.freed = True
            event_set.ready.notify_all()
    _state = _State()
    calls.clear()


def configure(gpus: list[FakeGpu], *, init_error: int | None = None,
              driver_version: str = "550.54.15", cuda_driver_version: int = 12040,
              nvml_version: str = "12.550.54.15",
              missing_functions: frozenset[str] | set[str] = frozenset()) -> None:
    """Describe the node's devices (and whether nvmlInit fails, and with which code).

    ``missing_functions`` are the C symbols the driver lacks (see DRIVER_R470, DRIVER_R418).
    """
    reset()
    _state.gpus = list(gpus)
    _state.missing_functions = frozenset(missing_functions)
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


def after_process_list(hook: Callable[[str, list[int]], None] | None) -> None:
    """Call ``hook(function name, PIDs)`` as each process list is returned (a PID may then exit)."""
    _state.after_process_list = hook


def _handle_for(gpu: FakeGpu) -> c_nvmlDevice_t:
    return _state.handles.setdefault(id(gpu), c_nvmlDevice_t(gpu))


def _record(name: str) -> None:
    with _lock:
        calls[name] += 1
    if not _state.initialised:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)


def _symbol(name: str) -> None:
    """What _nvmlGetFunctionPointer does first: a symbol this driver lacks is FunctionNotFound."""
    if name in _state.missing_functions:
        raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)


def _device(name: str, handle: c_nvmlDevice_t) -> FakeGpu:
    _record(name)
    _symbol(name)
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


# ---------------------------------------------------------------- running processes
# The driver's entry points, with their C calling convention: (device, *count, infos) ->
# return code. With infos NULL or too small they set *count and answer INSUFFICIENT_SIZE.
_PROCESS_SYMBOLS = {
    f"nvmlDeviceGet{kind}RunningProcesses{suffix}": (kind.lower(), struct)
    for kind in ("Compute", "Graphics")
    for suffix, struct in (("", _c_nvmlProcessInfo_v1_t), ("_v2", c_nvmlProcessInfo_v2_t),
                           ("_v3", c_nvmlProcessInfo_v3_t))
}


def _c_running_processes(symbol: str, struct: type[Structure], kind: str):
    def entry_point(device, count_ref, infos) -> int:
        with _lock:
            calls[symbol] += 1
        if not _state.initialised:
            return NVML_ERROR_UNINITIALIZED
        if not isinstance(device, c_nvmlDevice_t):
            return NVML_ERROR_INVALID_ARGUMENT
        gpu = device._gpu
        if gpu.lost:
            return NVML_ERROR_GPU_IS_LOST
        if symbol in gpu.not_supported:
            return NVML_ERROR_NOT_SUPPORTED
        if symbol in gpu.no_permission:
            return NVML_ERROR_NO_PERMISSION
        procs = gpu.compute_processes if kind == "compute" else gpu.graphics_processes
        count = count_ref._obj
        if not procs:
            count.value = 0
            return NVML_SUCCESS
        if infos is None or count.value < len(procs):
            count.value = len(procs)
            return NVML_ERROR_INSUFFICIENT_SIZE
        if [f[0] for f in type(infos[0])._fields_] != [f[0] for f in struct._fields_]:
            return NVML_ERROR_INVALID_ARGUMENT  # the caller's struct is not this version's
        for slot, proc in zip(infos, procs):
            slot.pid = proc.pid
            slot.usedGpuMemory = (NVML_VALUE_NOT_AVAILABLE_ulonglong.value if proc.used_mib is None
                                  else proc.used_mib * MiB)
            if hasattr(slot, "gpuInstanceId"):
                slot.gpuInstanceId = proc.gpu_instance_id
                slot.computeInstanceId = proc.compute_instance_id
        count.value = len(procs)
        return NVML_SUCCESS

    return entry_point


def _nvmlGetFunctionPointer(name):
    """pynvml's symbol lookup; the fake has C entry points for the process lists only."""
    if not _state.initialised:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)
    _symbol(name)
    if name not in _PROCESS_SYMBOLS:
        raise NotImplementedError(f"the fake pynvml has no C entry point for {name}")
    kind, struct = _PROCESS_SYMBOLS[name]
    return _c_running_processes(name, struct, kind)


def _running_processes(symbol: str, struct: type[Structure], handle) -> list[nvmlFriendlyObject]:
    """What pynvml's versioned wrappers do: ask for the size, oversize, ask again."""
    _record(symbol)
    fn = _nvmlGetFunctionPointer(symbol)
    count = c_uint(0)
    ret = fn(handle, byref(count), None)
    if ret == NVML_SUCCESS:
        return []
    if ret != NVML_ERROR_INSUFFICIENT_SIZE:
        raise NVMLError(ret)
    count.value = count.value * 2 + 5
    infos = (struct * count.value)()
    ret = fn(handle, byref(count), infos)
    if ret != NVML_SUCCESS:
        raise NVMLError(ret)
    procs = []
    for i in range(count.value):
        obj = nvmlStructToFriendlyObject(infos[i])
        if obj.usedGpuMemory == NVML_VALUE_NOT_AVAILABLE_ulonglong.value:
            obj.usedGpuMemory = None  # WDDM: the driver cannot say
        procs.append(obj)
    if _state.after_process_list is not None:
        _state.after_process_list(symbol, [p.pid for p in procs])
    return procs


def nvmlDeviceGetComputeRunningProcesses_v2(handle):
    return _running_processes("nvmlDeviceGetComputeRunningProcesses_v2", c_nvmlProcessInfo_v2_t, handle)


def nvmlDeviceGetComputeRunningProcesses_v3(handle):
    return _running_processes("nvmlDeviceGetComputeRunningProcesses_v3", c_nvmlProcessInfo_v3_t, handle)


def nvmlDeviceGetGraphicsRunningProcesses_v2(handle):
    return _running_processes("nvmlDeviceGetGraphicsRunningProcesses_v2", c_nvmlProcessInfo_v2_t, handle)


def nvmlDeviceGetGraphicsRunningProcesses_v3(handle):
    return _running_processes("nvmlDeviceGetGraphicsRunningProcesses_v3", c_nvmlProcessInfo_v3_t, handle)


def _unversioned(versioned, handle):
    # nvidia-ml-py's @throwOnVersionMismatch: the newest call, or a mismatch error on old drivers
    try:
        return versioned(handle)
    except NVMLError_FunctionNotFound:  # noqa: F821 - made by _extractNVMLErrorsAsClasses
        raise NVMLLibraryMismatchError(
            "Unversioned function called and the pyNVML version does not match the NVML lib "
            f"version. Either use matching pyNVML and NVML lib versions or use a versioned "
            f"function such as {versioned.__name__}") from None


def nvmlDeviceGetComputeRunningProcesses(handle):
    return _unversioned(nvmlDeviceGetComputeRunningProcesses_v3, handle)


def nvmlDeviceGetGraphicsRunningProcesses(handle):
    return _unversioned(nvmlDeviceGetGraphicsRunningProcesses_v3, handle)


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


# What older drivers lack, by the symbols gpufleet calls (newest first).
DRIVER_R470 = frozenset({  # before R510: no _v3 process calls, no "clocks event reasons" name
    "nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetGraphicsRunningProcesses_v3",
    "nvmlDeviceGetCurrentClocksEventReasons",
})
DRIVER_R418 = DRIVER_R470 | {  # before R450: no _v2 either, and no row remapping
    "nvmlDeviceGetComputeRunningProcesses_v2", "nvmlDeviceGetGraphicsRunningProcesses_v2",
    "nvmlDeviceGetRemappedRows",
}


# ---------------------------------------------------------------- health
def nvmlDeviceGetCurrentClocksEventReasons(handle):
    return _device("nvmlDeviceGetCurrentClocksEventReasons", handle).clocks_event_reasons


def nvmlDeviceGetCurrentClocksThrottleReasons(handle):
    return _device("nvmlDeviceGetCurrentClocksThrottleReasons", handle).clocks_event_reasons


def nvmlDeviceGetTotalEccErrors(handle, errorType, counterType):
    gpu = _device("nvmlDeviceGetTotalEccErrors", handle)
    if errorType not in (NVML_MEMORY_ERROR_TYPE_CORRECTED, NVML_MEMORY_ERROR_TYPE_UNCORRECTED):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    if counterType == NVML_VOLATILE_ECC:
        return gpu.ecc_volatile[errorType]
    if counterType == NVML_AGGREGATE_ECC:
        return gpu.ecc_aggregate[errorType]
    raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)


def _retired(name: str, device, sourceFilter) -> list[int]:
    gpu = _device(name, device)
    pages = {NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS: gpu.retired_pages_sbe,
             NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR: gpu.retired_pages_dbe}
    if sourceFilter not in pages:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    found = pages[sourceFilter]
    if found is None:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return list(found)


def nvmlDeviceGetRetiredPages(device, sourceFilter):
    return _retired("nvmlDeviceGetRetiredPages", device, sourceFilter)


def nvmlDeviceGetRetiredPages_v2(device, sourceFilter):
    return [{"address": a, "timestamp": 1_700_000_000_000_000 + i}
            for i, a in enumerate(_retired("nvmlDeviceGetRetiredPages_v2", device, sourceFilter))]


def nvmlDeviceGetRetiredPagesPendingStatus(device):
    gpu = _device("nvmlDeviceGetRetiredPagesPendingStatus", device)
    if gpu.retired_pages_sbe is None:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return int(gpu.retired_pages_pending)


def nvmlDeviceGetRemappedRows(device):
    gpu = _device("nvmlDeviceGetRemappedRows", device)
    if gpu.remapped_rows is None:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return tuple(gpu.remapped_rows)


def nvmlDeviceGetPcieThroughput(device, counter):
    # The real call samples a byte counter for 20 ms before it answers; the fake answers at once.
    gpu = _device("nvmlDeviceGetPcieThroughput", device)
    if counter == NVML_PCIE_UTIL_TX_BYTES:
        return gpu.pcie_tx_kb_s
    if counter == NVML_PCIE_UTIL_RX_BYTES:
        return gpu.pcie_rx_kb_s
    raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)


def nvmlDeviceGetCurrPcieLinkGeneration(handle):
    return _device("nvmlDeviceGetCurrPcieLinkGeneration", handle).pcie_link[0]


def nvmlDeviceGetCurrPcieLinkWidth(handle):
    return _device("nvmlDeviceGetCurrPcieLinkWidth", handle).pcie_link[1]


def nvmlDeviceGetMaxPcieLinkGeneration(handle):
    return _device("nvmlDeviceGetMaxPcieLinkGeneration", handle).pcie_max_link[0]


def nvmlDeviceGetMaxPcieLinkWidth(handle):
    return _device("nvmlDeviceGetMaxPcieLinkWidth", handle).pcie_max_link[1]


def nvmlDeviceGetEncoderUtilization(handle):
    return [_device("nvmlDeviceGetEncoderUtilization", handle).encoder_util, 167_000]


def nvmlDeviceGetDecoderUtilization(handle):
    return [_device("nvmlDeviceGetDecoderUtilization", handle).decoder_util, 167_000]


# ---------------------------------------------------------------- events
class _FakeEventSet:
    """An event set: the devices and types registered, and the events not yet waited for."""

    def __init__(self) -> None:
        self.registered: dict[int, int] = {}  # id(gpu) -> event type mask
        self.queue: list[c_nvmlEventData_t] = []
        self.ready = threading.Condition(_lock)
        self.freed = False


def nvmlEventSetCreate():
    _record("nvmlEventSetCreate")
    _symbol("nvmlEventSetCreate")
    event_set = _FakeEventSet()
    with _lock:
        _state.event_sets.append(event_set)
    return event_set


def nvmlDeviceGetSupportedEventTypes(handle):
    gpu = _device("nvmlDeviceGetSupportedEventTypes", handle)
    mask = nvmlEventTypePState | nvmlEventTypeClock
    return mask | (nvmlEventTypeXidCriticalError if gpu.xid_events else 0)


def nvmlDeviceRegisterEvents(handle, eventTypes, eventSet):
    gpu = _device("nvmlDeviceRegisterEvents", handle)
    if not isinstance(eventSet, _FakeEventSet) or eventSet.freed:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    if eventTypes & ~nvmlDeviceGetSupportedEventTypes(handle):
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    with _lock:
        eventSet.registered[id(gpu)] = eventSet.registered.get(id(gpu), 0) | eventTypes


def nvmlEventSetWait_v2(eventSet, timeoutms):
    """The next queued event, waiting up to ``timeoutms``; NVMLError_Timeout when none came."""
    _record("nvmlEventSetWait_v2")
    if not isinstance(eventSet, _FakeEventSet) or eventSet.freed:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    with eventSet.ready:
        if not eventSet.queue:
            eventSet.ready.wait(timeoutms / 1000.0)
        if eventSet.freed:  # the session ended under the wait (reset(), or a shutdown)
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        if not eventSet.queue:
            raise NVMLError(NVML_ERROR_TIMEOUT)
        return eventSet.queue.pop(0)


def nvmlEventSetWait(eventSet, timeoutms):
    return nvmlEventSetWait_v2(eventSet, timeoutms)


def nvmlEventSetFree(eventSet):
    _record("nvmlEventSetFree")
    with _lock:
        eventSet.freed = True
        if eventSet in _state.event_sets:
            _state.event_sets.remove(eventSet)


def inject_xid(index: int, xid: int) -> int:
    """The driver reports XID ``xid`` on GPU ``index``; returns how many event sets got it."""
    gpu = _state.gpus[index]
    delivered = 0
    with _lock:
        for event_set in _state.event_sets:
            if event_set.registered.get(id(gpu), 0) & nvmlEventTypeXidCriticalError:
                event_set.queue.append(c_nvmlEventData_t(
                    device=_handle_for(gpu), eventType=nvmlEventTypeXidCriticalError, eventData=xid))
                event_set.ready.notify_all()
                delivered += 1
    return delivered

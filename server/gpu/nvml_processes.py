"""The running-process calls a driver answers: ``_v3`` (R510+), else ``_v2`` (R450+), else the first.

nvidia-ml-py calls ``_v3`` by default; against an older driver that symbol is missing
(``NVMLError_FunctionNotFound``, or ``NVMLLibraryMismatchError`` from the unversioned
wrapper) and a node would list no processes at all. The first call that works is
kept for the life of the NVML session and said once. Current nvidia-ml-py no longer
wraps the original call, so it is made here through pynvml's own symbol lookup with
the original two-field struct (as nvitop's NVML layer does).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from types import ModuleType, SimpleNamespace
from typing import Any

log = logging.getLogger("gpufleet.gpu")

VERSIONS = ("v3", "v2", "v1")
_KINDS = {"compute": "Compute", "graphics": "Graphics"}
_NOT_AVAILABLE = ctypes.c_ulonglong(-1).value  # usedGpuMemory under WDDM


class _ProcessInfoV1(ctypes.Structure):
    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong)]


class NoProcessCall(Exception):
    """This driver answers none of the process-list calls."""


class ProcessListCalls:
    """``compute(handle)`` and ``graphics(handle)`` through the newest call the driver has."""

    def __init__(self, nvml: ModuleType) -> None:
        self._nvml = nvml
        self.version: str | None = None
        mismatch = getattr(nvml, "NVMLLibraryMismatchError", None)
        # The "this driver has no such call" family: each means "try the next older one".
        self._missing: tuple[type[BaseException], ...] = (
            (nvml.NVMLError_FunctionNotFound, mismatch) if mismatch else
            (nvml.NVMLError_FunctionNotFound,))

    def compute(self, handle: Any) -> list[Any]:
        return self._call("compute", handle)

    def graphics(self, handle: Any) -> list[Any]:
        return self._call("graphics", handle)

    def _call(self, kind: str, handle: Any) -> list[Any]:
        if self.version is not None:
            return self._function(kind, self.version)(handle)
        for version in VERSIONS:
            try:
                result = self._function(kind, version)(handle)
            except self._missing:
                continue
            self.version = version
            if version == "v3":
                log.info("NVML process lists: the _v3 calls")
            else:
                log.warning("NVML process lists: this driver has no _v3 calls; using the %s",
                            "_v2 calls" if version == "v2" else "original (v1) calls")
            return result
        raise NoProcessCall("the driver answers none of the running-process calls (v3, v2, v1)")

    def _function(self, kind: str, version: str) -> Callable[[Any], list[Any]]:
        name = f"nvmlDeviceGet{_KINDS[kind]}RunningProcesses"
        if version == "v1":
            return lambda handle: self._v1(name, handle)
        function = getattr(self._nvml, f"{name}_{version}", None)
        if function is None:  # a newer nvidia-ml-py that dropped the wrapper
            return self._raise_missing
        return function

    def _raise_missing(self, handle: Any) -> list[Any]:
        raise self._nvml.NVMLError(self._nvml.NVML_ERROR_FUNCTION_NOT_FOUND)

    def _v1(self, symbol: str, handle: Any) -> list[Any]:
        nvml = self._nvml
        lookup = getattr(nvml, "_nvmlGetFunctionPointer", None)
        if lookup is None:
            self._raise_missing(handle)
        fn = lookup(symbol)
        count = ctypes.c_uint(0)
        ret = fn(handle, ctypes.byref(count), None)
        if ret == nvml.NVML_SUCCESS:
            return []
        if ret != nvml.NVML_ERROR_INSUFFICIENT_SIZE:
            raise nvml.NVMLError(ret)
        count.value = count.value * 2 + 5  # room for processes started in between
        infos = (_ProcessInfoV1 * count.value)()
        ret = fn(handle, ctypes.byref(count), infos)
        if ret != nvml.NVML_SUCCESS:
            raise nvml.NVMLError(ret)
        return [SimpleNamespace(pid=info.pid, usedGpuMemory=None if info.usedGpuMemory ==
                                _NOT_AVAILABLE else info.usedGpuMemory)
                for info in infos[:count.value]]

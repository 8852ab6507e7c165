"""Purge adapters: each runtime that holds GPU memory on a node, and how to make it let go."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from gpufleet.server.config import RuntimeSettings
from gpufleet.server.gpu.base import GpuBackend, ModelHost
from gpufleet.server.runtimes.base import ModelGone, RuntimeAdapter, RuntimeAdapterError
from gpufleet.server.runtimes.ollama import OllamaAdapter
from gpufleet.server.runtimes.process import ProcessAdapter
from gpufleet.server.runtimes.simulated import SimulatedAdapter
from gpufleet.server.runtimes.triton import TritonAdapter

__all__ = [
    "ModelGone",
    "OllamaAdapter",
    "ProcessAdapter",
    "RuntimeAdapter",
    "RuntimeAdapterError",
    "RuntimeConfigError",
    "SimulatedAdapter",
    "TritonAdapter",
    "build_adapters",
]

log = logging.getLogger("gpufleet.purge")


class RuntimeConfigError(ValueError):
    """A configured runtime cannot be built; the message names it."""


def build_adapters(runtimes: Sequence[RuntimeSettings], backend: GpuBackend) -> list[RuntimeAdapter]:
    """The adapters a purge walks, in order: model servers first, then processes.

    Servers are asked politely before any process is signalled; a SimulatedAdapter
    is added when the backend holds models itself and none is configured.
    """
    servers: list[RuntimeAdapter] = []
    processes: list[RuntimeAdapter] = []
    for spec in runtimes:
        name = spec.name or spec.type
        if spec.type in ("ollama", "triton"):
            if not spec.url:
                raise RuntimeConfigError(f"runtime {name!r} ({spec.type}) needs a url")
            cls = OllamaAdapter if spec.type == "ollama" else TritonAdapter
            servers.append(cls(spec.url, spec.timeout_s, name=name))
        elif spec.type == "process":
            if backend.simulated:
                log.warning("runtime %r ignored: a simulated backend's PIDs are not real", name)
                continue
            processes.append(ProcessAdapter(backend, spec.process_names, spec.users,
                                            spec.grace_s, name=name))
        elif spec.type == "simulated":
            if not isinstance(backend, ModelHost):
                raise RuntimeConfigError(f"runtime {name!r}: the GPU backend holds no models")
            servers.append(SimulatedAdapter(backend, name=name))
    if isinstance(backend, ModelHost) and not any(isinstance(a, SimulatedAdapter) for a in servers):
        servers.insert(0, SimulatedAdapter(backend))
    return servers + processes

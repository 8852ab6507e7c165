"""Choose this node's GPU backend: real NVML when it works, else the simulated fleet's local node."""

from __future__ import annotations

import logging

from gpufleet.server.gpu.base import BackendUnavailable, GpuBackend

log = logging.getLogger("gpufleet.gpu")


def open_backend(*, simulate: bool = False) -> GpuBackend:
    """NvmlBackend if NVML loads and finds a GPU (unless ``simulate``), otherwise SimulatedBackend.

    Raises BackendUnavailable only when neither can be built (e.g. the fleet file is broken).
    """
    if not simulate:
        from gpufleet.server.gpu.nvml import NvmlBackend

        try:
            backend = NvmlBackend()
        except BackendUnavailable as exc:
            log.info("NVML unavailable (%s): using the simulated fleet", exc)
        else:
            log.info("GPU backend: NVML (%d GPU(s))", backend.gpu_count)
            return backend
    from gpufleet.server.gpu.simulated import SimulatedBackend

    try:
        backend = SimulatedBackend()
    except Exception as exc:  # a broken fleet.toml: say why rather than crash with a traceback
        raise BackendUnavailable(f"neither NVML nor the simulated fleet is usable: {exc}") from exc
    log.info("GPU backend: simulated node %s", backend.node_name)
    return backend

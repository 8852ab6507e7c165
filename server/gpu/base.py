"""The GPU backend interface every reader of GPU state goes through."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from datetime import datetime

from gpufleet.server.schemas import GpuInfo, GpuProcess, LoadedModel, NodeInfo, SignalName


@dataclass(frozen=True, slots=True)
class GpuSnapshot:
    """One consistent reading of a node: every GPU and GPU process, taken in one pass."""

    taken_at: datetime
    node: NodeInfo
    gpus: tuple[GpuInfo, ...]
    processes: tuple[GpuProcess, ...]
    # Unsupported fields, once each: "GPU 0: fan_speed_pct" — reported once, not per tick.
    warnings: tuple[str, ...] = field(default=())


class BackendUnavailable(Exception):
    """Neither NVML nor the simulator can serve this node; the message says why."""


class GpuBackend(abc.ABC):
    """Reads a node's GPUs. ``snapshot()`` blocks (NVML is synchronous): call it off the event loop."""

    simulated: bool = False

    @abc.abstractmethod
    def snapshot(self) -> GpuSnapshot: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the library (nvmlShutdown); the default holds nothing."""

    def signal_process(self, entry: GpuProcess, signal: SignalName) -> None:
        """Signal a process a snapshot of this backend listed (blocking).

        Raises ``signals.SignalRefused`` when it may not be signalled and
        ``signals.ProcessGone`` when it is no longer there.
        """
        from gpufleet.server.gpu.signals import send_os_signal

        send_os_signal(entry, signal)


class ModelHost(abc.ABC):
    """Something that holds models in GPU memory on this node and can let them go.

    The simulated backend is one; the purge's ``simulated`` runtime adapter wraps it.
    """

    @abc.abstractmethod
    def loaded_models(self) -> list[LoadedModel]: ...

    @abc.abstractmethod
    def unload(self, name: str) -> None:
        """Unload one model; raises KeyError when it is not loaded."""

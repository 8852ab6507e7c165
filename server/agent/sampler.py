"""One MetricSample-shaped dict per GPU per tick, from a GpuBackend snapshot. No HTTP here.

``gpufleet serve`` uses the same sampler in-process and writes its samples
straight into its store; the agent spools and posts them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

from gpufleet.server.agent.attribution import WorkloadShare, gpu_tags, group_workloads, process_tags
from gpufleet.server.agent.energy import EnergyMeter
from gpufleet.server.gpu.base import GpuBackend, GpuSnapshot
from gpufleet.server.schemas import GpuInfo, GpuProcess, format_utc

log = logging.getLogger("gpufleet.agent")

# The documented ranges: a reading outside them is a driver glitch. A required field out
# of range drops that GPU's sample; an optional one is left out — either way one bad
# reading never makes the server reject a whole batch.
_REQUIRED_RANGES: dict[str, tuple[float, float]] = {
    "power_draw_w": (0.0, 1500.0),
    "utilization_gpu_pct": (0.0, 100.0),
    "utilization_memory_pct": (0.0, 100.0),
    "temperature_c": (0.0, 120.0),
    "memory_used_mb": (0.0, math.inf),
}
_OPTIONAL_RANGES: dict[str, tuple[float, float]] = {
    "power_limit_w": (0.0, math.inf),
    "energy_delta_j": (0.0, math.inf),
    "fan_speed_pct": (0.0, 100.0),
    "memory_total_mb": (0.0, math.inf),
    "sm_clock_mhz": (0.0, math.inf),
    "memory_clock_mhz": (0.0, math.inf),
}
ATTRIBUTION_FIELDS = ("job_id", "team_id", "model_tag", "scheduler_source")
MAX_TAG_CHARS = 128
MAX_HOSTNAME_CHARS = 255  # as the heartbeat allows


class Attributor(Protocol):
    def attribute(self, snapshot: GpuSnapshot) -> dict[int, dict[str, str]]:
        """Per GPU index: any of job_id, team_id, model_tag, scheduler_source."""
        ...


class WorkloadAttributor(Attributor, Protocol):
    def workloads(self, snapshot: GpuSnapshot) -> dict[int, list[WorkloadShare]]:
        """Per GPU index: its workloads, each with its share when there are several."""
        ...


def _in_range(value: Any, bounds: tuple[float, float]) -> bool:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and bounds[0] <= value <= bounds[1]


class Sampler:
    """Reads the backend and shapes each GPU's reading as the ingest API takes it."""

    def __init__(
        self,
        backend: GpuBackend,
        attributor: Attributor | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backend = backend
        self._attributor = attributor
        self._clock = clock
        self._energy = EnergyMeter()
        self._last_timestamp: dict[str, str] = {}
        self._warned: set[str] = set()
        self.last_snapshot: GpuSnapshot | None = None

    def sample(self) -> list[dict[str, Any]]:
        """One JSON-ready sample per readable GPU. Blocks on the backend: call it off the event loop."""
        snapshot = self._backend.snapshot()
        return self.samples_from(snapshot, at=self._clock())

    def samples_from(self, snapshot: GpuSnapshot, *, at: float) -> list[dict[str, Any]]:
        """Shape one snapshot taken at monotonic time ``at``."""
        self.last_snapshot = snapshot
        timestamp = format_utc(snapshot.taken_at)
        attribution = self._attribute(snapshot)
        # The additive ``hostname`` field lets the hosts listing show this host's last sample.
        hostname = snapshot.node.hostname[:MAX_HOSTNAME_CHARS] or None
        samples: list[dict[str, Any]] = []
        present: set[str] = set()
        for gpu in snapshot.gpus:
            if gpu.lost or not gpu.uuid:
                self._warn_once(f"lost:{gpu.index}", "GPU %d is lost or has no UUID; no sample", gpu.index)
                continue
            present.add(gpu.uuid)
            # Timestamps have whole seconds: a second reading within the same second would
            # collide with the first in the server's duplicate detection, so it is skipped
            # before it touches the energy state (the next sample then covers its energy).
            if self._last_timestamp.get(gpu.uuid, "") >= timestamp:
                continue
            sample = self._shape(gpu, timestamp)
            if sample is None:
                continue
            self._last_timestamp[gpu.uuid] = timestamp
            delta = self._energy.delta(
                gpu.uuid,
                energy_j=gpu.energy_j,
                power_w=gpu.power_draw_w,
                power_limit_w=gpu.power_limit_w,
                at=at,
            )
            if delta is not None:
                sample["energy_delta_j"] = delta
            if hostname:
                sample["hostname"] = hostname
            # A shared GPU: one sample per workload, the same reading, each with its share.
            for workload in attribution.get(gpu.index) or [WorkloadShare({})]:
                row = {**sample, **workload.fields}
                if workload.fraction is not None:
                    row["gpu_fraction"] = workload.fraction
                    row["gpu_fraction_basis"] = workload.basis
                samples.append(row)
        self._energy.forget(present)
        return samples

    def _shape(self, gpu: GpuInfo, timestamp: str) -> dict[str, Any] | None:
        required = {
            "power_draw_w": gpu.power_draw_w,
            "utilization_gpu_pct": gpu.utilization.gpu_percent,
            "utilization_memory_pct": gpu.utilization.memory_percent,
            "temperature_c": gpu.temperature_c,
            "memory_used_mb": gpu.memory.used_mb,
        }
        bad = [name for name, value in required.items() if not _in_range(value, _REQUIRED_RANGES[name])]
        if bad:
            self._warn_once(
                f"required:{gpu.index}:{','.join(bad)}",
                "GPU %d: %s unsupported or out of range; its sample is skipped",
                gpu.index, ", ".join(bad),
            )
            return None
        sample: dict[str, Any] = {
            "timestamp": timestamp,
            "gpu_index": gpu.index,
            "gpu_uuid": gpu.uuid,
            "gpu_name": gpu.name,
            **required,
        }
        optional = {
            "power_limit_w": gpu.power_limit_w,
            "fan_speed_pct": gpu.fan_speed_pct,
            "memory_total_mb": gpu.memory.total_mb,
            "sm_clock_mhz": gpu.sm_clock_mhz,
            "memory_clock_mhz": gpu.memory_clock_mhz,
        }
        for name, value in optional.items():
            if _in_range(value, _OPTIONAL_RANGES[name]):
                sample[name] = value
        return sample

    def _attribute(self, snapshot: GpuSnapshot) -> dict[int, list[WorkloadShare]]:
        if self._attributor is None:
            # the backend's own tags: a process's (the simulated fleet knows whose each one
            # is), else the GPU's
            by_gpu: dict[int, list[GpuProcess]] = {}
            for process in snapshot.processes:
                if process.gpu_index is not None:
                    by_gpu.setdefault(process.gpu_index, []).append(process)
            found: dict[int, list[WorkloadShare]] = {}
            for gpu in snapshot.gpus:
                processes = sorted(by_gpu.get(gpu.index, []), key=lambda p: -(p.memory_mb or 0))
                found[gpu.index] = group_workloads(processes, [process_tags(p) for p in processes],
                                                   [gpu_tags(gpu)])
        else:
            try:
                workloads = getattr(self._attributor, "workloads", None)
                found = workloads(snapshot) if workloads is not None else {
                    index: [WorkloadShare(fields)]
                    for index, fields in self._attributor.attribute(snapshot).items()}
            except Exception:  # attribution is best effort: it never stops sampling
                log.exception("attribution failed; samples go out unattributed")
                return {}
        return {
            index: [WorkloadShare({k: str(v)[:MAX_TAG_CHARS] for k, v in w.fields.items()
                                   if k in ATTRIBUTION_FIELDS and v}, w.fraction, w.basis)
                    for w in workloads]
            for index, workloads in found.items()
        }

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

"""A GPU snapshot as metric families: dcgm-exporter's series, and gpufleet's own per GPU.

Names, types, units and labels are dcgm-exporter's (``gpu``, ``UUID``, ``pci_bus_id``
where known, ``device``, ``modelName``, ``Hostname``; a MIG instance adds
``GPU_I_PROFILE`` and ``GPU_I_ID``), so its dashboards and alerts work unchanged. A
field the backend cannot read (None) has no series, as dcgm-exporter skips blank
values. Rendering happens once per snapshot, not per scrape (``GpuMetrics.render``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gpufleet.server.gpu.base import GpuSnapshot
from gpufleet.server.metrics.exposition import Family, Labels, render_family
from gpufleet.server.schemas import GpuInfo

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class DcgmField:
    """One dcgm-exporter series and how to read it from a GpuInfo."""

    name: str
    type: str
    help: str
    read: Callable[[GpuInfo], Any]


def _health(name: str) -> Callable[[GpuInfo], Any]:
    """A field that only some backends (or versions of GpuInfo) have."""
    return lambda gpu: getattr(gpu, name, None)


def _part(name: str, part: str) -> Callable[[GpuInfo], Any]:
    """A part of a health record (``ecc_errors.volatile_corrected``); None when the GPU has none."""
    def read(gpu: GpuInfo) -> Any:
        value = getattr(getattr(gpu, name, None), part, None)
        return int(value) if isinstance(value, bool) else value
    return read


# NVML's clocks-event (throttle) reason bits, as DCGM_FI_DEV_CLOCK_THROTTLE_REASONS carries them
THROTTLE_BITS: dict[str, int] = {
    "gpu_idle": 0x1, "applications_clocks_setting": 0x2, "sw_power_cap": 0x4,
    "hw_slowdown": 0x8, "sync_boost": 0x10, "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40, "hw_power_brake_slowdown": 0x80, "display_clock_setting": 0x100,
}


def throttle_mask(gpu: GpuInfo) -> int | None:
    """The throttle reasons as NVML's bitmask (0: full speed); an ``unknown_0x..`` bit kept."""
    reasons = getattr(gpu, "throttle_reasons", None)
    if reasons is None:
        return None
    mask = 0
    for reason in reasons:
        if reason in THROTTLE_BITS:
            mask |= THROTTLE_BITS[reason]
        elif reason.startswith("unknown_0x"):
            try:
                mask |= int(reason.removeprefix("unknown_"), 16)
            except ValueError:
                continue
    return mask


def last_xid(gpu: GpuInfo) -> int | None:
    """The latest XID error's number (0: none since the server started), as DCGM reports it."""
    if getattr(gpu, "xid_error_count", None) is None:
        return None
    errors = getattr(gpu, "xid_errors", None) or []
    return errors[-1].xid if errors else 0


# In dcgm-exporter's default-counters order, then the health fields; units as DCGM's.
DCGM_FIELDS: tuple[DcgmField, ...] = (
    DcgmField("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock (MHz).", lambda g: g.sm_clock_mhz),
    DcgmField("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock (MHz).",
              lambda g: g.memory_clock_mhz),
    DcgmField("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "Memory temperature (C).",
              _health("memory_temperature_c")),
    DcgmField("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (C).", lambda g: g.temperature_c),
    DcgmField("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (W).", lambda g: g.power_draw_w),
    DcgmField("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter",
              "Energy consumed since the driver loaded (mJ).",
              lambda g: None if g.energy_j is None else round(g.energy_j * 1000)),
    DcgmField("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (%).",
              lambda g: g.utilization.gpu_percent),
    DcgmField("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory (copy engine) utilization (%).",
              lambda g: g.utilization.memory_percent),
    DcgmField("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (MiB).",
              lambda g: g.memory.free_mb),
    DcgmField("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (MiB).",
              lambda g: g.memory.used_mb),
    DcgmField("DCGM_FI_DEV_FB_TOTAL", "gauge", "Framebuffer memory total (MiB).",
              lambda g: g.memory.total_mb),
    DcgmField("DCGM_FI_DEV_POWER_MGMT_LIMIT", "gauge", "Power management limit (W).",
              lambda g: g.power_limit_w),
    DcgmField("DCGM_FI_DEV_FAN_SPEED", "gauge", "Fan speed (%).", lambda g: g.fan_speed_pct),
    DcgmField("DCGM_FI_DEV_ENC_UTIL", "gauge", "Encoder utilization (%).",
              _part("utilization", "encoder_percent")),
    DcgmField("DCGM_FI_DEV_DEC_UTIL", "gauge", "Decoder utilization (%).",
              _part("utilization", "decoder_percent")),
    # health (where the backend reads it)
    DcgmField("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "gauge",
              "Why clocks are held down now: NVML's clocks-event reason bits (0: full speed).",
              throttle_mask),
    DcgmField("DCGM_FI_DEV_XID_ERRORS", "gauge",
              "The last XID error's number (0: none since the server started).", last_xid),
    DcgmField("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "counter",
              "Single-bit (corrected) ECC errors since the driver loaded.",
              _part("ecc_errors", "volatile_corrected")),
    DcgmField("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "counter",
              "Double-bit (uncorrected) ECC errors since the driver loaded.",
              _part("ecc_errors", "volatile_uncorrected")),
    DcgmField("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", "counter",
              "Single-bit (corrected) ECC errors over the GPU's life.",
              _part("ecc_errors", "aggregate_corrected")),
    DcgmField("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", "counter",
              "Double-bit (uncorrected) ECC errors over the GPU's life.",
              _part("ecc_errors", "aggregate_uncorrected")),
    DcgmField("DCGM_FI_DEV_RETIRED_SBE", "counter", "Pages retired for single-bit errors.",
              _part("retired_pages", "single_bit_ecc")),
    DcgmField("DCGM_FI_DEV_RETIRED_DBE", "counter", "Pages retired for double-bit errors.",
              _part("retired_pages", "double_bit_ecc")),
    DcgmField("DCGM_FI_DEV_RETIRED_PENDING", "counter",
              "1 when a page retirement waits for a GPU reset.", _part("retired_pages", "pending")),
    DcgmField("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "counter",
              "Rows remapped for uncorrectable errors.", _part("remapped_rows", "uncorrectable")),
    DcgmField("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "counter",
              "Rows remapped for correctable errors.", _part("remapped_rows", "correctable")),
    DcgmField("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "1 when a row remapping failed.",
              _part("remapped_rows", "failed")),
    DcgmField("DCGM_FI_DEV_ROW_REMAP_PENDING", "gauge",
              "1 when a row remap waits for a GPU reset.", _part("remapped_rows", "pending")),
    # dcgm-exporter declares these counters, though NVML gives KB/s over 20 ms: kept as it does
    DcgmField("DCGM_FI_DEV_PCIE_TX_THROUGHPUT", "counter", "PCIe transmit throughput (KB/s).",
              _part("pcie", "tx_kb_s")),
    DcgmField("DCGM_FI_DEV_PCIE_RX_THROUGHPUT", "counter", "PCIe receive throughput (KB/s).",
              _part("pcie", "rx_kb_s")),
    DcgmField("DCGM_FI_DEV_PCIE_LINK_GEN", "gauge", "PCIe link generation now.",
              _part("pcie", "link_gen")),
    DcgmField("DCGM_FI_DEV_PCIE_LINK_WIDTH", "gauge", "PCIe link width now (lanes).",
              _part("pcie", "link_width")),
    DcgmField("DCGM_FI_DEV_PCIE_MAX_LINK_GEN", "gauge", "Best PCIe link generation.",
              _part("pcie", "max_link_gen")),
    DcgmField("DCGM_FI_DEV_PCIE_MAX_LINK_WIDTH", "gauge", "Best PCIe link width (lanes).",
              _part("pcie", "max_link_width")),
)
# Fields that belong to a MIG instance rather than its GPU, when the GPU is in MIG mode.
_PER_INSTANCE = {"DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_TOTAL"}
_MIG_PROFILE = re.compile(r"(\d+g\.\d+gb(?:\+\w+)?)", re.IGNORECASE)


def gpu_labels(gpu: GpuInfo, hostname: str) -> Labels:
    """dcgm-exporter's labels of one GPU, in its order."""
    labels: list[tuple[str, str]] = [("gpu", str(gpu.index)), ("UUID", gpu.uuid or "")]
    pci = getattr(gpu, "pci_bus_id", None)
    if pci:
        labels.append(("pci_bus_id", str(pci)))
    minor = getattr(gpu, "minor_number", None)
    labels.append(("device", f"nvidia{gpu.index if minor is None else minor}"))
    labels.append(("modelName", gpu.name))
    labels.append(("Hostname", hostname))
    return tuple(labels)


def mig_profile(name: str | None) -> str:
    """``MIG 1g.10gb Device 0`` -> ``1g.10gb``, the profile dcgm-exporter puts in GPU_I_PROFILE."""
    match = _MIG_PROFILE.search(name or "")
    return match.group(1) if match else (name or "")


def dcgm_families(snapshot: GpuSnapshot) -> list[Family]:
    """Every dcgm-exporter series a snapshot has values for."""
    hostname = snapshot.node.hostname
    families = []
    for spec in DCGM_FIELDS:
        family = Family(spec.name, spec.type, spec.help)
        for gpu in snapshot.gpus:
            if gpu.lost:
                continue
            labels = gpu_labels(gpu, hostname)
            if spec.name in _PER_INSTANCE and gpu.mig_mode and gpu.mig_devices:
                _add_instances(family, spec.name, gpu, labels)
                continue
            value = spec.read(gpu)
            if _usable(value):
                family.add(labels, value)
        if family.samples:
            families.append(family)
    return families


def _add_instances(family: Family, name: str, gpu: GpuInfo, labels: Labels) -> None:
    for mig in gpu.mig_devices:
        total, used = mig.memory_total_mb, mig.memory_used_mb
        value = {"DCGM_FI_DEV_FB_USED": used, "DCGM_FI_DEV_FB_TOTAL": total,
                 "DCGM_FI_DEV_FB_FREE": None if total is None or used is None
                 else total - used}[name]
        if _usable(value):
            family.add((*labels, ("GPU_I_PROFILE", mig_profile(mig.name)),
                        ("GPU_I_ID", str(mig.index))), value)


def _usable(value: Any) -> bool:
    return value is not None and not isinstance(value, bool) and isinstance(value, int | float)


Attribution = Mapping[int, list[Mapping[str, str]]]  # GPU index -> one mapping per workload


def gpufleet_gpu_families(snapshot: GpuSnapshot, attribution: Attribution) -> list[Family]:
    """gpufleet's own per-GPU series: who each GPU works for, and its processes' memory."""
    hostname = snapshot.node.hostname
    by_index = {gpu.index: gpu for gpu in snapshot.gpus}
    info = Family("gpufleet_gpu_attribution_info", "info",
                  "Who a GPU works for: team, model tag, job and scheduler (value 1).")
    for gpu in snapshot.gpus:
        base = (("gpu", str(gpu.index)), ("UUID", gpu.uuid or ""), ("Hostname", hostname))
        for who in attribution.get(gpu.index) or [{}]:
            info.add((*base, ("team", who.get("team_id") or ""),
                      ("model", who.get("model_tag") or ""), ("job", who.get("job_id") or ""),
                      ("scheduler", who.get("scheduler_source") or "")), 1)
    memory = Family("gpufleet_gpu_process_memory_bytes", "gauge",
                    "GPU memory held by one process.", unit="bytes")
    for process in snapshot.processes:
        gpu = by_index.get(process.gpu_index) if process.gpu_index is not None else None
        if gpu is None or process.memory_mb is None:
            continue
        memory.add((("gpu", str(gpu.index)), ("UUID", gpu.uuid or ""), ("Hostname", hostname),
                    ("pid", str(process.pid)), ("process", process.name),
                    ("user", process.user or "")), process.memory_mb * MIB)
    xids = Family("gpufleet_gpu_xid_errors_total", "counter",
                  "XID errors the driver reported for a GPU since the server started.")
    for gpu in snapshot.gpus:
        count = getattr(gpu, "xid_error_count", None)
        if count is not None:
            xids.add((("gpu", str(gpu.index)), ("UUID", gpu.uuid or ""), ("Hostname", hostname)),
                     count)
    node = snapshot.node
    node_info = Family("gpufleet_node_info", "info",
                       "This node: GPU backend, simulated or real, driver (value 1).")
    node_info.add((("Hostname", hostname), ("backend", node.backend),
                   ("simulated", "true" if node.simulated else "false"),
                   ("driver_version", node.driver_version or ""),
                   ("cuda_version", node.cuda_version or "")), 1)
    return [f for f in (info, memory, xids, node_info) if f.samples]


@dataclass(frozen=True, slots=True)
class RenderedGpus:
    """One snapshot's GPU families, rendered once in each format."""

    text: str
    openmetrics: str


def render_gpus(snapshot: GpuSnapshot, attribution: Attribution) -> RenderedGpus:
    families = [*dcgm_families(snapshot), *gpufleet_gpu_families(snapshot, attribution)]
    return RenderedGpus(
        text="".join(render_family(f, openmetrics=False) for f in families),
        openmetrics="".join(render_family(f, openmetrics=True) for f in families))

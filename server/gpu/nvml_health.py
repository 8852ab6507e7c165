"""GPU health through NVML: clock event (throttle) reasons, ECC, page retirement, row remapping, PCIe.

Each reader takes the backend's field reader, so an unsupported call is None (noted
once) and a lost GPU stops the device's reading. Health is often unsupported for good
reason (no ECC on a GeForce, rows remapped instead of pages retired since Ampere), so
these fields are read ``quiet``: noted in one INFO line per GPU, never a warning.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any, Protocol, TypeVar

from gpufleet.server.schemas import GpuEcc, GpuPcie, GpuRemappedRows, GpuRetiredPages

T = TypeVar("T")

# NVML's clocks event reason bits (nvmlClocksEventReason*, formerly *ThrottleReason*).
REASON_BITS: tuple[tuple[int, str], ...] = (
    (0x001, "gpu_idle"),
    (0x002, "applications_clocks_setting"),
    (0x004, "sw_power_cap"),
    (0x008, "hw_slowdown"),
    (0x010, "sync_boost"),
    (0x020, "sw_thermal_slowdown"),
    (0x040, "hw_thermal_slowdown"),
    (0x080, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
)
_KNOWN_BITS = sum(bit for bit, _ in REASON_BITS)


class FieldRead(Protocol):
    def __call__(self, label: str, read: Callable[..., T] | None, *args: Any,
                 quiet: bool = False) -> T | None: ...

    def first(self, label: str, reads: list[Callable[..., T] | None], *args: Any,
              quiet: bool = False) -> T | None: ...


def reason_names(mask: int) -> list[str]:
    """The names of the bits set in a reason mask; a bit this gpufleet does not know, by value."""
    names = [name for bit, name in REASON_BITS if mask & bit]
    unknown = mask & ~_KNOWN_BITS
    bit = 1
    while unknown:
        if unknown & bit:
            names.append(f"unknown_0x{bit:x}")
            unknown &= ~bit
        bit <<= 1
    return names


def throttle_reasons(field: FieldRead, nvml: ModuleType) -> list[str] | None:
    # R535 renamed the call; older drivers only have the throttle name (FunctionNotFound).
    mask = field.first("throttle_reasons", [
        getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None),
        getattr(nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None),
    ], quiet=True)
    return None if mask is None else reason_names(int(mask))


def ecc_errors(field: FieldRead, nvml: ModuleType) -> GpuEcc | None:
    read = nvml.nvmlDeviceGetTotalEccErrors
    corrected, uncorrected = nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
    volatile_corrected = field("ecc_errors", read, corrected, nvml.NVML_VOLATILE_ECC, quiet=True)
    if volatile_corrected is None:  # no ECC (or ECC off): the other three say the same
        return None
    return GpuEcc(
        volatile_corrected=volatile_corrected,
        volatile_uncorrected=field("ecc_errors", read, uncorrected, nvml.NVML_VOLATILE_ECC, quiet=True),
        aggregate_corrected=field("ecc_errors", read, corrected, nvml.NVML_AGGREGATE_ECC, quiet=True),
        aggregate_uncorrected=field("ecc_errors", read, uncorrected, nvml.NVML_AGGREGATE_ECC,
                                    quiet=True),
    )


def retired_pages(field: FieldRead, nvml: ModuleType) -> GpuRetiredPages | None:
    pending = field("retired_pages", nvml.nvmlDeviceGetRetiredPagesPendingStatus, quiet=True)
    if pending is None:  # Ampere and later remap rows instead
        return None
    reads = [getattr(nvml, "nvmlDeviceGetRetiredPages_v2", None),
             getattr(nvml, "nvmlDeviceGetRetiredPages", None)]
    single = field.first("retired_pages", reads,
                         nvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS, quiet=True)
    double = field.first("retired_pages", reads,
                         nvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR, quiet=True)
    return GpuRetiredPages(single_bit_ecc=None if single is None else len(single),
                           double_bit_ecc=None if double is None else len(double),
                           pending=bool(pending))


def remapped_rows(field: FieldRead, nvml: ModuleType) -> GpuRemappedRows | None:
    rows = field("remapped_rows", getattr(nvml, "nvmlDeviceGetRemappedRows", None), quiet=True)
    if rows is None:
        return None
    correctable, uncorrectable, pending, failed = rows
    return GpuRemappedRows(correctable=correctable, uncorrectable=uncorrectable,
                           pending=bool(pending), failed=bool(failed))


def pcie(field: FieldRead, nvml: ModuleType, throughput: tuple[int | None, int | None] | None,
         max_link: tuple[int | None, int | None]) -> GpuPcie | None:
    """The link now (cheap calls) with the latest throughput the watcher sampled."""
    gen = field("pcie_link", nvml.nvmlDeviceGetCurrPcieLinkGeneration, quiet=True)
    width = field("pcie_link", nvml.nvmlDeviceGetCurrPcieLinkWidth, quiet=True)
    tx, rx = throughput if throughput is not None else (None, None)
    if gen is None and width is None and tx is None and rx is None:
        return None
    return GpuPcie(tx_kb_s=tx, rx_kb_s=rx, link_gen=gen, link_width=width,
                   max_link_gen=max_link[0], max_link_width=max_link[1])


def max_pcie_link(field: FieldRead, nvml: ModuleType) -> tuple[int | None, int | None]:
    return (field("pcie_max_link", nvml.nvmlDeviceGetMaxPcieLinkGeneration, quiet=True),
            field("pcie_max_link", nvml.nvmlDeviceGetMaxPcieLinkWidth, quiet=True))


def engine_percent(field: FieldRead, label: str, read: Callable[..., list[int]]) -> int | None:
    """Encoder or decoder utilization: NVML answers [percent, sampling period in µs]."""
    value = field(label, read, quiet=True)
    return None if value is None else int(value[0])

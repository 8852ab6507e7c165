"""Threshold levels of GPU readings, from ``[console.thresholds]`` (pure: no Textual, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gpufleet.server.config import ConsoleThresholds
from gpufleet.server.schemas import GpuInfo

Level = Literal["ok", "warn", "crit"]
_RANK: dict[Level, int] = {"ok": 0, "warn": 1, "crit": 2}


def level(value: float | None, warn: float, crit: float) -> Level:
    """``ok`` below ``warn``, ``warn`` below ``crit``, else ``crit``; an unknown reading is ``ok``."""
    if value is None or value < warn:
        return "ok"
    return "warn" if value < crit else "crit"


def worst(*levels: Level) -> Level:
    return max(levels, key=_RANK.__getitem__, default="ok")


@dataclass(frozen=True, slots=True)
class GpuAlarm:
    """Why a GPU is marked: each reading at or over its warning threshold, with its level."""

    level: Level
    reasons: tuple[str, ...]


class Levels:
    """The configured thresholds applied to one GPU's readings."""

    def __init__(self, thresholds: ConsoleThresholds | None = None) -> None:
        self.t = thresholds or ConsoleThresholds()
        self._throttle = frozenset(self.t.throttle_reasons)

    def temp(self, celsius: float | None) -> Level:
        return level(celsius, self.t.temp_warn_c, self.t.temp_crit_c)

    def memory(self, percent_used: float | None) -> Level:
        return level(percent_used, self.t.memory_warn_pct, self.t.memory_crit_pct)

    def power(self, gpu: GpuInfo) -> Level:
        return level(power_pct(gpu), self.t.power_warn_pct, self.t.power_crit_pct)

    def util(self, percent: float | None) -> Level:
        return level(percent, self.t.util_warn_pct, self.t.util_crit_pct)

    def idle(self, gpu: GpuInfo) -> bool:
        """Under the idle threshold (an unknown reading is neither idle nor busy)."""
        util = gpu.utilization.gpu_percent
        return util is not None and util < self.t.idle_util_pct

    def busy(self, gpu: GpuInfo) -> bool:
        util = gpu.utilization.gpu_percent
        return util is not None and util >= self.t.idle_util_pct

    def hot(self, gpu: GpuInfo) -> bool:
        return self.temp(gpu.temperature_c) != "ok"

    def throttle_reasons(self, gpu: GpuInfo) -> list[str]:
        """The GPU's active throttle reasons that the thresholds call trouble (none where unsupported)."""
        return [r for r in gpu.throttle_reasons or () if r in self._throttle]

    def ecc_level(self, gpu: GpuInfo) -> Level:
        """From the volatile ECC counts, where the backend reports them."""
        ecc = gpu.ecc_errors
        if ecc is None:
            return "ok"
        if ecc.volatile_uncorrected is not None and ecc.volatile_uncorrected >= self.t.ecc_uncorrected_crit:
            return "crit"
        if ecc.volatile_corrected is not None and ecc.volatile_corrected >= self.t.ecc_corrected_warn:
            return "warn"
        return "ok"

    @staticmethod
    def memory_faults(gpu: GpuInfo) -> bool:
        """Retired pages or remapped rows waiting for a reset, a failed remap, or XID errors."""
        rows, pages = gpu.remapped_rows, gpu.retired_pages
        return bool((rows is not None and (rows.pending or rows.failed))
                    or (pages is not None and pages.pending)
                    or gpu.xid_error_count)

    def alarm(self, gpu: GpuInfo) -> GpuAlarm:
        """Every reading at or over its warning threshold; utilization is colour only, never trouble."""
        if gpu.lost:
            return GpuAlarm("crit", ("lost",))
        checks: list[tuple[str, Level]] = [
            ("hot", self.temp(gpu.temperature_c)),
            ("memory", self.memory(gpu.memory.percent_used)),
            ("power", self.power(gpu)),
            ("ecc", self.ecc_level(gpu)),
        ]
        if self.memory_faults(gpu):
            checks.append(("faults", "crit"))
        if self.throttle_reasons(gpu):
            checks.append(("throttled", "warn"))
        found = [(name, lvl) for name, lvl in checks if lvl != "ok"]
        return GpuAlarm(worst(*(lvl for _, lvl in found)), tuple(name for name, _ in found))

    def over(self, gpu: GpuInfo) -> bool:
        """At a critical level on any reading, or throttling / erroring: what the summary counts.

        The same as ``alarm(gpu)`` at ``crit`` or throttled, without building it (every GPU, every redraw).
        """
        t = self.t
        if gpu.lost or gpu.memory.percent_used >= t.memory_crit_pct:
            return True
        if gpu.temperature_c is not None and gpu.temperature_c >= t.temp_crit_c:
            return True
        power = power_pct(gpu)
        if power is not None and power >= t.power_crit_pct:
            return True
        return self.ecc_level(gpu) == "crit" or self.memory_faults(gpu) or bool(self.throttle_reasons(gpu))


def power_pct(gpu: GpuInfo) -> float | None:
    if gpu.power_draw_w is None or not gpu.power_limit_w:
        return None
    return 100.0 * gpu.power_draw_w / gpu.power_limit_w

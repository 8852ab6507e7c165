"""Energy between two samples of one GPU: NVML's total-energy counter, or power x time when it cannot be trusted."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("gpufleet.agent")

# The documented ceiling of power_draw_w: the bound when a GPU reports neither power nor limit.
MAX_POWER_W = 1500.0
# A counter delta above (power ceiling x elapsed x this) is a jump, not energy: the GPU
# cannot average more than its limit, and the factor leaves room for transient boosts.
CAP_FACTOR = 1.5


@dataclass(frozen=True, slots=True)
class EnergyReading:
    energy_j: float | None  # total-energy counter, joules; None when unsupported
    power_w: float | None
    at: float  # monotonic seconds


class EnergyMeter:
    """Remembers the previous reading per GPU and turns the next one into a sane ``energy_delta_j``."""

    def __init__(self, *, cap_factor: float = CAP_FACTOR) -> None:
        self._cap_factor = cap_factor
        self._previous: dict[str, EnergyReading] = {}

    def delta(
        self,
        key: str,
        *,
        energy_j: float | None,
        power_w: float | None,
        power_limit_w: float | None,
        at: float,
    ) -> float | None:
        """Joules used since the previous reading of ``key``; None on the first reading."""
        current = EnergyReading(energy_j, power_w, at)
        previous = self._previous.get(key)
        self._previous[key] = current
        if previous is None:
            return None
        elapsed = at - previous.at
        if elapsed <= 0:
            return None
        ceiling_w = max(power_limit_w or 0.0, power_w or 0.0, previous.power_w or 0.0) or MAX_POWER_W
        cap_j = ceiling_w * elapsed * self._cap_factor
        if energy_j is not None and previous.energy_j is not None:
            counted = energy_j - previous.energy_j
            if 0.0 <= counted <= cap_j:
                return round(counted, 3)
            # A counter that went backwards was reset (driver reload); one far ahead jumped.
            log.warning(
                "energy counter of %s %s (%.0f J in %.1f s); using power x time",
                key, "went backwards" if counted < 0 else "jumped", counted, elapsed,
            )
        return self._from_power(previous.power_w, power_w, elapsed, cap_j)

    @staticmethod
    def _from_power(
        previous_w: float | None, current_w: float | None, elapsed: float, cap_j: float
    ) -> float | None:
        readings = [w for w in (previous_w, current_w) if w is not None and w >= 0]
        if not readings:
            return None
        # The mean of the two ends: the trapezoid over the interval.
        return round(min(sum(readings) / len(readings) * elapsed, cap_j), 3)

    def forget(self, keep: set[str]) -> None:
        """Drop the readings of GPUs no longer present (a GPU removed or lost)."""
        for key in list(self._previous):
            if key not in keep:
                del self._previous[key]

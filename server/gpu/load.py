"""Deterministic load curves for the simulated fleet: utilization over time and its exact integral.

Time is seconds since ``EPOCH`` (a Monday, the simulated drivers' load time). Each
schedule has a smooth level with a closed-form (or cached, per-day) integral, so the
energy counter can be computed for any instant in O(1) and never goes backwards;
the instantaneous reading adds small seeded jitter on top of the smooth level.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday
DAY = 86_400.0
HOUR = 3_600.0
JITTER_BUCKET_S = 5  # the jitter changes every 5 s: 1 Hz pollers see movement, not noise

_MASK = (1 << 64) - 1


def mix(*values: int) -> int:
    """A 64-bit hash of integers (splitmix64 steps): fast, stable across runs and platforms."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & _MASK)) * 0xBF58476D1CE4E5B9 & _MASK
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _MASK
        h ^= h >> 29
    return h


def unit(*values: int) -> float:
    """A deterministic number in [0, 1) from integers."""
    return (mix(*values) >> 11) / float(1 << 53)


def seconds_since_epoch(at: datetime) -> float:
    return (at - EPOCH).total_seconds()


class LoadCurve:
    """One job's utilization (0..1) over time, for one of the fleet's schedules."""

    # Levels a platform engineer would recognise: busy plateaus, idle-but-loaded floors.
    CONTINUOUS_MEAN, CONTINUOUS_SWING, CONTINUOUS_PEAK_H = 0.80, 0.12, 16.0
    BUSINESS_BUSY, BUSINESS_IDLE, BUSINESS_START_H, BUSINESS_END_H = 0.78, 0.02, 8.0, 19.0
    NIGHTLY_BUSY, NIGHTLY_START_H, NIGHTLY_END_H = 0.90, 22.0, 6.0
    ADHOC_BUSY, ADHOC_CHANCE = 0.85, 0.55
    # Adhoc bursts repeat every 4 weeks: nobody notices, and the integral stays O(1).
    ADHOC_CYCLE_DAYS = 28

    def __init__(self, schedule: str, seed: int) -> None:
        if schedule not in ("continuous", "business_hours", "nightly", "adhoc"):
            raise ValueError(f"unknown schedule {schedule!r}")
        self.schedule = schedule
        self.seed = seed
        self._adhoc_prefix: list[float] = []  # integral at the start of cycle day d (adhoc only)

    # ------------------------------------------------------------ level
    def level(self, t: float) -> float:
        day, sec = divmod(t, DAY)
        hour = sec / HOUR
        if self.schedule == "continuous":
            phase = 2 * math.pi * (hour - self.CONTINUOUS_PEAK_H + 6) / 24
            return self.CONTINUOUS_MEAN + self.CONTINUOUS_SWING * math.sin(phase)
        if self.schedule == "business_hours":
            if int(day) % 7 < 5 and self.BUSINESS_START_H <= hour < self.BUSINESS_END_H:
                return self.BUSINESS_BUSY
            return self.BUSINESS_IDLE
        if self.schedule == "nightly":
            return self.NIGHTLY_BUSY if self._in_night(hour) else 0.0
        start, end = self._burst(int(day))
        return self.ADHOC_BUSY if start <= hour < end else 0.0

    def busy(self, t: float) -> bool:
        """Whether the job is working at t (its model is in use), not just loaded."""
        return self.schedule == "continuous" or self.level(t) > 0.1

    def utilization(self, t: float, salt: int) -> float:
        """The level plus seeded jitter: what one GPU (salt) of the job reads at t."""
        level = self.level(t)
        amplitude = 0.06 if level > 0.1 else 0.01
        noise = unit(self.seed, salt, int(t // JITTER_BUCKET_S)) * 2 - 1
        return min(1.0, max(0.0, level + amplitude * noise))

    # ------------------------------------------------------------ integral
    def integral(self, t: float) -> float:
        """The smooth level integrated from EPOCH to t (fraction-seconds); non-decreasing."""
        t = max(t, 0.0)
        day_f, sec = divmod(t, DAY)
        day, hour = int(day_f), sec / HOUR
        if self.schedule == "continuous":
            omega = 2 * math.pi / DAY
            shift = 2 * math.pi * (6 - self.CONTINUOUS_PEAK_H) / 24
            swing = self.CONTINUOUS_SWING / omega * (math.cos(shift) - math.cos(omega * t + shift))
            return self.CONTINUOUS_MEAN * t + swing
        if self.schedule == "business_hours":
            weekdays = 5 * (day // 7) + min(day % 7, 5)
            busy_h = self.BUSINESS_END_H - self.BUSINESS_START_H
            today = 0.0
            if day % 7 < 5:
                today = min(max(hour - self.BUSINESS_START_H, 0.0), busy_h)
            extra = (self.BUSINESS_BUSY - self.BUSINESS_IDLE) * HOUR * (weekdays * busy_h + today)
            return self.BUSINESS_IDLE * t + extra
        if self.schedule == "nightly":
            night_h = 24 - self.NIGHTLY_START_H + self.NIGHTLY_END_H
            today = min(hour, self.NIGHTLY_END_H) + max(hour - self.NIGHTLY_START_H, 0.0)
            return self.NIGHTLY_BUSY * HOUR * (day * night_h + today)
        start, end = self._burst(day)
        today = min(max(hour - start, 0.0), end - start)
        return self._adhoc_before(day) + self.ADHOC_BUSY * HOUR * today

    # ------------------------------------------------------------ helpers
    def _in_night(self, hour: float) -> bool:
        return hour >= self.NIGHTLY_START_H or hour < self.NIGHTLY_END_H

    def _burst(self, day: int) -> tuple[float, float]:
        """Hours [start, end) of day's burst; (0, 0) on a quiet day."""
        day %= self.ADHOC_CYCLE_DAYS
        if unit(self.seed, day, 1) >= self.ADHOC_CHANCE:
            return 0.0, 0.0
        start = 8.0 + 12.0 * unit(self.seed, day, 2)
        return start, min(24.0, start + 2.0 + 3.0 * unit(self.seed, day, 3))

    def _adhoc_before(self, day: int) -> float:
        """The integral at the start of ``day``: whole cycles plus the cycle's prefix."""
        prefix = self._adhoc_prefix
        if not prefix:
            total = 0.0
            for d in range(self.ADHOC_CYCLE_DAYS + 1):
                prefix.append(total)
                start, end = self._burst(d)
                total += self.ADHOC_BUSY * HOUR * (end - start)
        cycles, rest = divmod(day, self.ADHOC_CYCLE_DAYS)
        return cycles * prefix[self.ADHOC_CYCLE_DAYS] + prefix[rest]

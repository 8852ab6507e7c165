"""The latest GPU reading a scrape serves: never an NVML call per scrape.

The in-process sampler publishes each snapshot it takes (with the attribution it
computed); between its ticks, ``run`` (started by the first scrape) reads the backend
itself whenever the latest reading is ``refresh_s`` old, so a scrape at any rate costs
no NVML call and serves a reading at most ``refresh_s`` old. Each reading is rendered once, lazily, per format.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gpufleet.server.gpu.base import GpuBackend, GpuSnapshot
from gpufleet.server.metrics.gpu import Attribution, RenderedGpus, render_gpus

log = logging.getLogger("gpufleet.metrics")

AttributeFn = Callable[[GpuSnapshot], Mapping[int, Mapping[str, str]]]


@dataclass(slots=True)
class Reading:
    """One snapshot with who each GPU works for, and when (monotonic) it was taken."""

    snapshot: GpuSnapshot
    attribution: Attribution
    read_at: float
    _rendered: RenderedGpus | None = field(default=None, repr=False)

    def rendered(self) -> RenderedGpus:
        if self._rendered is None:
            self._rendered = render_gpus(self.snapshot, self.attribution)
        return self._rendered


def attribution_from_samples(samples: list[dict[str, Any]]) -> Attribution:
    """GPU index -> the attribution of each of its samples, as the sampler made them."""
    found: dict[int, list[Mapping[str, str]]] = {}
    for sample in samples:
        who = {k: str(sample[k]) for k in ("team_id", "model_tag", "job_id", "scheduler_source")
               if sample.get(k)}
        rows = found.setdefault(int(sample["gpu_index"]), [])
        if who not in rows:
            rows.append(who)
    return found


class GpuFeed:
    """Holds the latest reading; ``run`` keeps it at most ``refresh_s`` old."""

    def __init__(self, backend: GpuBackend, attribute: AttributeFn, *, refresh_s: float,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._backend = backend
        self._attribute = attribute
        self.refresh_s = refresh_s
        self._monotonic = monotonic
        self.latest: Reading | None = None
        self.error: str | None = None  # why the last read failed, until one succeeds
        self._changed = asyncio.Event()

    def publish(self, snapshot: GpuSnapshot, attribution: Attribution) -> None:
        """A reading someone else took (the sampler's tick)."""
        self.latest = Reading(snapshot, attribution, self._monotonic())
        self.error = None
        self._changed.set()

    def age_s(self) -> float | None:
        return None if self.latest is None else self._monotonic() - self.latest.read_at

    async def first(self, timeout_s: float) -> Reading | None:
        """The latest reading, waiting up to ``timeout_s`` for the first one (None: none came)."""
        if self.latest is None and self.error is None:
            self._changed.clear()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._changed.wait()
            except TimeoutError:
                pass
        return self.latest

    async def run(self, *, sampler_running: bool = False) -> None:
        """Read whenever the latest reading is ``refresh_s`` old; a failure is kept, not raised.

        With the sampler running, its first tick is awaited (up to ``refresh_s``) instead
        of reading the GPUs twice at start.
        """
        if sampler_running:
            await self.first(self.refresh_s)
        while True:
            age = self.age_s()
            if age is None or age >= self.refresh_s:
                await self._read()
                age = self.age_s() or 0.0
            await asyncio.sleep(max(0.0, self.refresh_s - age) if self.latest else self.refresh_s)

    async def _read(self) -> None:
        try:
            snapshot, attribution = await asyncio.to_thread(self._read_blocking)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the backend is gone: /metrics says so (backend_up 0)
            if self.error is None:
                log.warning("GPU reading for /metrics failed: %s", exc)
            self.error = str(exc) or type(exc).__name__
            self._changed.set()
            return
        self.publish(snapshot, attribution)

    def _read_blocking(self) -> tuple[GpuSnapshot, Attribution]:
        snapshot = self._backend.snapshot()
        try:
            found = self._attribute(snapshot)
        except Exception:  # attribution is best effort, as in the sampler
            log.exception("attribution for /metrics failed")
            found = {}
        return snapshot, {index: [dict(who)] for index, who in found.items()}

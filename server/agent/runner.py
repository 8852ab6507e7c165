"""The agent loop: sample on a monotonic grid, spool first, deliver, heartbeat, report status.

Theory: every batch is written to the spool (fsync) before anything tries to
send it, and leaves the spool only once the server stored it. Delivery is a
separate task draining the spool oldest first, so an outage, a 429 or a crash
only ever delays samples, and a restart picks up where the last run stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

from gpufleet.server import __version__
from gpufleet.server.agent.adoption import Adoption
from gpufleet.server.agent.delivery import (
    AuthProblem,
    Backoff,
    Delivery,
    DeliveryStats,
    Step,
    auth_problem,
)
from gpufleet.server.agent.sampler import Sampler
from gpufleet.server.agent.spool import Spool
from gpufleet.server.client import Conflict, Forbidden, GpuFleetError, RateLimited, Unauthorized
from gpufleet.server.config import AgentSettings
from gpufleet.server.schemas import Heartbeat, HeartbeatResult, IngestResult

log = logging.getLogger("gpufleet.agent")

EXIT_OK = 0
EXIT_UNDELIVERED = 1  # --once: the samples taken could not be delivered (they stay spooled)
EXIT_AUTH = 2


class AgentClient(Protocol):
    async def ingest(self, samples: bytes) -> IngestResult: ...
    async def heartbeat(self, hb: Heartbeat) -> HeartbeatResult: ...


def encode_batch(samples: list[dict[str, Any]]) -> bytes:
    return json.dumps(samples, separators=(",", ":"), allow_nan=False).encode()


def next_tick(start: float, interval: float, now: float) -> float:
    """The first grid point ``start + k * interval`` after ``now``: a slow tick skips points, never stacks."""
    return start + (math.floor((now - start) / interval) + 1) * interval


class AgentRunner:
    """Composes sampler, spool, delivery and heartbeat; ``run`` returns the process exit code."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        sampler: Sampler,
        spool: Spool,
        client: AgentClient,
        clock: Callable[[], float] = time.monotonic,
        backoff: Backoff | None = None,
        adoption: Adoption | None = None,
    ) -> None:
        """``adoption``: the folders of the key's earlier secrets, sent first once the server vouches."""
        self._settings = settings
        self._sampler = sampler
        self._spool = spool
        self._client = client
        self._clock = clock
        backoff = backoff or Backoff(base_s=settings.retry_base_s, max_s=settings.retry_max_s)
        self.delivery = Delivery(spool, client, max_samples=settings.batch_max_samples, backoff=backoff)
        self.adoption = adoption
        self.samples_taken = 0
        self.sample_errors = 0
        self._data = asyncio.Event()
        self._stopping = asyncio.Event()  # sampling ends (after one final sample)
        self._draining = asyncio.Event()  # delivery flushes what is left, then returns
        self._sampled = asyncio.Event()  # the first sample is in: the heartbeat knows the GPUs

    # ---- the whole run ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        """Run until ``stop`` is set (SIGTERM): then one final sample, a bounded flush, exit 0."""
        sampling = asyncio.create_task(self._sample_loop(), name="agent-sampling")
        delivery = asyncio.create_task(self._delivery_loop(), name="agent-delivery")
        helpers = [
            asyncio.create_task(self._heartbeat_loop(), name="agent-heartbeat"),
            asyncio.create_task(self._status_loop(), name="agent-status"),
        ]
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([stopped, delivery, helpers[0]], return_when=asyncio.FIRST_COMPLETED)
            problem = self._auth_problem(delivery, helpers[0])
            if problem is not None:
                return self._stop_for_auth(problem)
            self._stopping.set()
            await sampling
            self._draining.set()
            self._data.set()
            try:
                await asyncio.wait_for(delivery, self._settings.flush_timeout_s)
            except TimeoutError:
                log.info("flush timed out; what is left stays in the spool for the next run")
            except AuthProblem as exc:
                return self._stop_for_auth(exc)
            return EXIT_OK
        finally:
            for task in (sampling, delivery, stopped, *helpers):
                task.cancel()
            await asyncio.gather(sampling, delivery, stopped, *helpers, return_exceptions=True)
            self.log_status()

    async def run_once(self) -> int:
        """One sample and a heartbeat, delivered; non-zero when something is left in the spool."""
        taken = await self.tick()
        heartbeat_error: str | None = None
        try:
            await self._send_heartbeat()
        except AuthProblem as exc:
            return self._stop_for_auth(exc)
        except GpuFleetError as exc:
            heartbeat_error = exc.message
        # One attempt per batch: the reason is said once, below, not as "next try in ..." lines.
        self.delivery.retry_log_level = logging.DEBUG
        if self.adoption is not None:
            self.adoption.retry_log_level = logging.DEBUG
        self._draining.set()
        try:
            await asyncio.wait_for(self._delivery_loop(), self._settings.flush_timeout_s)
        except TimeoutError:
            pass
        except AuthProblem as exc:
            return self._stop_for_auth(exc)
        pending = self._spool.stats.pending_samples
        folders = [str(self._spool.directory)]
        if self.adoption is not None and self.adoption.pending_samples:
            pending += self.adoption.pending_samples
            folders += [str(f) for f in self.adoption.folders]
        if pending:
            errors = [s.last_error for s in self._delivery_stats() if s.last_error]
            log.error(
                "not delivered: %d samples (%s); they stay in the spool %s and go out on the next run",
                pending, errors[-1] if errors else "the flush timed out", ", ".join(folders),
            )
            return EXIT_UNDELIVERED
        if heartbeat_error is not None:
            log.warning("heartbeat failed: %s", heartbeat_error)
        self.log_status()
        if not taken:
            log.error("no samples taken: %s", "sampling failed" if self.sample_errors else "no GPU reported")
            return EXIT_UNDELIVERED
        return EXIT_OK

    @staticmethod
    def _auth_problem(*tasks: asyncio.Task[Any]) -> AuthProblem | None:
        for task in tasks:
            if task.done() and not task.cancelled() and isinstance(task.exception(), AuthProblem):
                return task.exception()  # type: ignore[return-value]
        return None

    def _stop_for_auth(self, problem: AuthProblem) -> int:
        log.error("agent stopped: %s. Samples stay in the spool (%s).", problem, self._spool.directory)
        return EXIT_AUTH

    # ---- sampling --------------------------------------------------------------------------

    async def tick(self) -> int:
        """Sample every GPU and spool the batch; returns how many samples it held."""
        try:
            samples = await asyncio.to_thread(self._sampler.sample)
        except Exception as exc:  # NVML hiccups must not end the agent
            self.sample_errors += 1
            log.warning("sampling failed: %s", exc)
            return 0
        if samples:
            try:
                self._spool.append(encode_batch(samples), len(samples))
            except OSError as exc:  # a full or failing disk: this batch is lost, say so
                self.sample_errors += 1
                log.error("could not spool %d samples: %s", len(samples), exc)
                return 0
            self.samples_taken += len(samples)
            self._data.set()
            log.debug("tick: %d samples spooled, %d batches pending", len(samples),
                      self._spool.stats.pending_records)
        self._sampled.set()
        return len(samples)

    async def _sample_loop(self) -> None:
        interval = self._settings.interval_s
        start = self._clock()
        while True:
            await self.tick()
            wake_at = next_tick(start, interval, self._clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), max(0.0, wake_at - self._clock()))
            if self._stopping.is_set():
                await self.tick()  # the final sample
                return

    # ---- delivery --------------------------------------------------------------------------

    async def _step(self) -> tuple[Step, float]:
        """One delivery step: an earlier secret's spool first (once the server vouches), then this run's."""
        if self.adoption is not None:
            step, delay = await self.adoption.step()
            if step is not Step.IDLE:
                return step, delay
        return await self.delivery.step()

    async def _delivery_loop(self) -> None:
        while True:
            self._data.clear()
            step, delay = await self._step()
            if step is Step.SENT:
                continue
            if self._draining.is_set():
                return  # nothing left, or the server is away: the spool keeps it
            if step is Step.IDLE:
                await self._data.wait()
                continue
            try:
                await asyncio.wait_for(self._draining.wait(), delay)
            except TimeoutError:
                continue
            # Stopping during a backoff: the server asked for time (or is away), so the
            # flush does not retry early; what is left stays spooled for the next run.
            return

    # ---- heartbeat and status --------------------------------------------------------------

    async def _send_heartbeat(self) -> None:
        snapshot = self._sampler.last_snapshot
        if snapshot is None:
            return
        hb = Heartbeat(agent_version=__version__, gpu_count=len(snapshot.gpus), hostname=snapshot.node.hostname)
        try:
            await self._client.heartbeat(hb)
        except (Unauthorized, Forbidden, Conflict) as exc:
            raise auth_problem(exc) from None

    async def _heartbeat_loop(self) -> None:
        backoff = Backoff(base_s=5.0, max_s=self._settings.heartbeat_interval_s)
        await self._sampled.wait()
        while True:
            delay = self._settings.heartbeat_interval_s
            try:
                await self._send_heartbeat()
                backoff.reset()
            except GpuFleetError as exc:
                retry_after = exc.retry_after if isinstance(exc, RateLimited) else None
                delay = min(delay, backoff.next_delay(retry_after))
                log.info("heartbeat failed (%s); next in %.0f s", exc.message, delay)
            await asyncio.sleep(delay)

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.status_interval_s)
            self.log_status()

    def _delivery_stats(self) -> list[DeliveryStats]:
        """This run's delivery and, before it, those of earlier secrets' spools."""
        return [*(self.adoption.stats if self.adoption is not None else []), self.delivery.stats]

    def log_status(self) -> None:
        every, s = self._delivery_stats(), self._spool.stats
        errors = [d.last_error for d in every if d.last_error]
        log.info(
            "agent status: %d samples taken, %d sent (%d already stored), %d spooled in %d batches, "
            "%d dropped, %d rejected, last error: %s",
            self.samples_taken, sum(d.sent_samples for d in every), sum(d.duplicates for d in every),
            s.pending_samples, s.pending_records, s.dropped_samples,
            sum(d.rejected_samples for d in every), errors[-1] if errors else "none",
        )

"""Drains the spool to ``POST /v1/metrics/ingest``, oldest first, one batch in flight.

A batch is acknowledged in the spool only after the server answered 200, so a
crash at any point re-sends it; the pinned extent makes that re-send the same
bytes and the server's duplicate detection makes it harmless.
"""

from __future__ import annotations

import enum
import logging
import random
from dataclasses import dataclass
from typing import Protocol

from gpufleet.server.agent.spool import Batch, Spool
from gpufleet.server.client import (
    BadRequest,
    Conflict,
    ConnectionFailed,
    Forbidden,
    GpuFleetError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    Unauthorized,
)
from gpufleet.server.schemas import IngestResult

log = logging.getLogger("gpufleet.agent")

MAX_BATCH_BYTES = 1024 * 1024  # well under the server's default body limit (8 MiB)


class IngestClient(Protocol):
    async def ingest(self, samples: bytes) -> IngestResult: ...


class AuthProblem(Exception):
    """The server refuses this agent: its key, or its simulated samples (409); retrying cannot help.

    The message never holds the key.
    """


def auth_problem(exc: GpuFleetError) -> AuthProblem:
    if isinstance(exc, Conflict):
        return AuthProblem(
            f"the server refused simulated samples ({exc.status}: {exc.message}); send them to a "
            "server started with --simulate, or run the agent without --simulate on a GPU node"
        )
    if isinstance(exc, Forbidden):
        return AuthProblem(
            f"the server accepted the API key but it may not do this ({exc.status}: {exc.message}); "
            "create a key with the 'ingest' scope"
        )
    return AuthProblem(
        f"the server refused the API key ({exc.status}: {exc.message}): it is unknown, revoked "
        "or rotated; check --key-file or GPUFLEET_KEY"
    )


class Backoff:
    """Exponential backoff with jitter; a server's Retry-After is a floor, never shortened."""

    def __init__(self, *, base_s: float = 1.0, max_s: float = 60.0, rng: random.Random | None = None) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self._rng = rng or random.Random()
        self._failures = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        ceiling = min(self.max_s, self.base_s * 2**self._failures)
        self._failures += 1
        # "Equal jitter": half fixed, half random, so agents restarted together spread out.
        delay = ceiling / 2 + self._rng.uniform(0, ceiling / 2)
        if retry_after is not None:
            delay = max(delay, retry_after + self._rng.uniform(0, min(1.0, retry_after / 10 + 0.05)))
        return delay

    def reset(self) -> None:
        self._failures = 0


class Step(enum.Enum):
    SENT = "sent"
    IDLE = "idle"  # nothing pending
    RETRY = "retry"  # wait ``delay`` and try the same batch again


@dataclass(slots=True)
class DeliveryStats:
    sent_batches: int = 0
    sent_samples: int = 0  # stored, or already stored (duplicates)
    duplicates: int = 0
    rejected_batches: int = 0
    rejected_samples: int = 0
    failures: int = 0
    last_error: str | None = None


class Delivery:
    """One step at a time: send the oldest batch, then acknowledge, set aside or back off."""

    def __init__(
        self,
        spool: Spool,
        client: IngestClient,
        *,
        max_samples: int = 1000,
        max_bytes: int = MAX_BATCH_BYTES,
        backoff: Backoff | None = None,
    ) -> None:
        self._spool = spool
        self._client = client
        self._max_samples = max_samples
        self._max_bytes = max_bytes
        self._backoff = backoff or Backoff()
        self.stats = DeliveryStats()
        self.retry_log_level = logging.INFO  # the one-shot agent reports failures once, itself
        # After a joined batch is refused, its records go one by one to find the bad one.
        self._one_by_one_until: tuple[int, int] | None = None

    async def step(self) -> tuple[Step, float]:
        """Deliver the oldest batch; ``(RETRY, delay)`` when it should be tried again later."""
        single = self._one_by_one_until is not None
        batch = self._spool.next_batch(
            max_samples=1 if single else self._max_samples, max_bytes=1 if single else self._max_bytes
        )
        if batch is None:
            return Step.IDLE, 0.0
        try:
            result = await self._client.ingest(batch.body)
        except (Unauthorized, Forbidden, Conflict) as exc:
            self.stats.last_error = f"{exc.status} {exc.message}"
            raise auth_problem(exc) from None
        except RateLimited as exc:
            return self._retry(exc, exc.retry_after)
        except ServerError as exc:
            # 507 (the server's disk is full), 503, 500...: the batch stays, sent again after
            # at least the server's Retry-After
            return self._retry(exc, exc.retry_after)
        except (ConnectionFailed, NotFound) as exc:
            # NotFound: a wrong URL or an older server; keep the data and keep trying.
            return self._retry(exc, None)
        except (BadRequest, PayloadTooLarge) as exc:
            self._reject(batch, exc)
            return Step.SENT, 0.0
        except GpuFleetError as exc:
            if exc.status is not None and 400 <= exc.status < 500:
                self._reject(batch, exc)
                return Step.SENT, 0.0
            return self._retry(exc, None)
        self._spool.ack(batch)
        self._backoff.reset()
        self._after(batch)
        self.stats.sent_batches += 1
        self.stats.sent_samples += batch.count
        self.stats.duplicates += result.duplicates
        return Step.SENT, 0.0

    def _retry(self, exc: GpuFleetError, retry_after: float | None) -> tuple[Step, float]:
        self.stats.failures += 1
        self.stats.last_error = f"{exc.status} {exc.message}" if exc.status else exc.message
        delay = self._backoff.next_delay(retry_after)
        log.log(self.retry_log_level, "ingest failed (%s); batch kept in the spool, next try in %.1f s",
                self.stats.last_error, delay)
        return Step.RETRY, delay

    def _reject(self, batch: Batch, exc: GpuFleetError) -> None:
        self.stats.last_error = f"{exc.status} {exc.message}"
        if batch.records > 1:
            # One bad record refuses the whole joined body: retry its records alone.
            log.warning("server refused a joined batch (%s); sending its %d parts one by one",
                        self.stats.last_error, batch.records)
            self._spool.unpin()
            self._one_by_one_until = batch.end
            return
        path = self._spool.set_aside(batch, f"{exc.status} {exc.message}")
        self.stats.rejected_batches += 1
        self.stats.rejected_samples += batch.count
        log.error("server refused a batch of %d samples (%s); set aside as %s",
                  batch.count, self.stats.last_error, path)
        self._after(batch)

    def _after(self, batch: Batch) -> None:
        if self._one_by_one_until is not None and batch.end >= self._one_by_one_until:
            self._one_by_one_until = None

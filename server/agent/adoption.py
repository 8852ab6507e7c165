"""Delivers what the agent spooled under an earlier secret of its key, once the server vouches for it.

A rotation gives a key a new secret (so a new spool folder) and keeps its id and
account. At start the agent asks the server which key its secret is
(``GET /v1/keys/self``) and records the answer in its folder's destination.json.
Folders of the same server URL and kind whose recorded identity (key id and account,
as that server named them for the old secret) is the one the server now names for
the new secret hold this key's samples: they are delivered, oldest folder first,
before the run's own, each from its own spool, so a crash mid-way resends the same
bytes and the server's duplicate detection keeps delivery exactly-once. A folder
with no recorded identity or another one is never sent; it is named once. A server
that cannot be reached is asked again later; one that has no such route (an older
gpufleet) leaves the folders where they are.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gpufleet.server.agent import destinations
from gpufleet.server.agent.delivery import (
    Backoff,
    Delivery,
    DeliveryStats,
    IngestClient,
    Step,
    auth_problem,
)
from gpufleet.server.agent.spool import Spool, SpoolLocked, pending_samples
from gpufleet.server.client import Forbidden, GpuFleetError, RateLimited, ServerError, Unauthorized
from gpufleet.server.schemas import KeyInfo

log = logging.getLogger("gpufleet.agent")

# Left in a drained folder by the spool itself; anything else (rejected/) keeps the folder.
_BOOKKEEPING = ("destination.json", "ack", "inflight", "ack.tmp", "inflight.tmp", "lock")
_UNTIL = " until the server confirms they are this key's (same key id and account)"


class OwnKeyClient(IngestClient, Protocol):
    async def own_key(self) -> KeyInfo: ...


@dataclass(slots=True)
class _Adopted:
    folder: Path
    spool: Spool
    delivery: Delivery


class Adoption:
    """Learns the key's identity from the server, then drains the folders of its earlier secrets."""

    def __init__(self, base: Path, mine: Path, server: str, *, simulated: bool, client: OwnKeyClient,
                 max_samples: int, max_bytes: int, backoff: Backoff,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._mine = mine
        self._client = client
        self._max_samples = max_samples
        self._max_bytes = max_bytes
        self._backoff = backoff
        self._clock = clock
        self.candidates = destinations.earlier_secrets(base, mine, server, simulated=simulated)
        self.identity: tuple[str, str] | None = None
        self.finished = False
        self.retry_log_level = logging.INFO
        self._retry_at = 0.0
        self._named = False
        self._adopted: list[_Adopted] = []
        self._done_stats: list[DeliveryStats] = []

    # ---- what the runner reads -------------------------------------------------------------

    @property
    def pending_samples(self) -> int:
        return sum(a.spool.stats.pending_samples for a in self._adopted)

    @property
    def stats(self) -> list[DeliveryStats]:
        return [*self._done_stats, *(a.delivery.stats for a in self._adopted)]

    @property
    def folders(self) -> list[Path]:
        return [a.folder for a in self._adopted]

    # ---- one step --------------------------------------------------------------------------

    async def step(self) -> tuple[Step, float]:
        """Send one batch of an earlier secret's spool; IDLE when there is none (yet, or at all)."""
        if self.finished:
            return Step.IDLE, 0.0
        waiting = self.identity is None and self._clock() < self._retry_at
        if waiting or (self.identity is None and not await self._learn()):
            return Step.IDLE, 0.0
        while self._adopted:
            adopted = self._adopted[0]
            step, delay = await adopted.delivery.step()
            if step is not Step.IDLE:
                return step, delay
            self._adopted.pop(0)
            self._drained(adopted)
        self.finished = True
        return Step.IDLE, 0.0

    async def _learn(self) -> bool:
        """Ask the server which key this is; adopt the folders it vouches for. False: not now."""
        try:
            info = await self._client.own_key()
        except (Unauthorized, Forbidden) as exc:
            raise auth_problem(exc) from None
        except GpuFleetError as exc:
            if exc.status is not None and 400 <= exc.status < 500 and exc.status not in (408, 429):
                # No such route (an older gpufleet, another implementation of the API):
                # nothing can vouch for the old folders, so they stay.
                self.finished = True
                self._name_all(f" (the server does not say which key this is: {exc.status} "
                               f"{exc.message})")
                return False
            retry_after = exc.retry_after if isinstance(exc, RateLimited | ServerError) else None
            delay = self._backoff.next_delay(retry_after)
            self._retry_at = self._clock() + delay
            log.log(self.retry_log_level, "could not ask the server which key this is (%s); next try in %.1f s",
                    f"{exc.status} {exc.message}" if exc.status else exc.message, delay)
            self._name_all(_UNTIL)
            return False
        self.identity = (info.id, info.account)
        destinations.record_identity(self._mine, info.id, info.account)
        for folder in self.candidates:
            if destinations.recorded_identity(folder) == self.identity:
                self._adopt(folder)
            elif not self._named:
                destinations.name(folder, self._mine, pending_samples(folder))
        self._named = True
        return True

    def _name_all(self, until: str) -> None:
        if not self._named:
            for folder in self.candidates:
                destinations.name(folder, self._mine, pending_samples(folder), until=until)
        self._named = True

    def _adopt(self, folder: Path) -> None:
        assert self.identity is not None
        try:
            spool = Spool(folder, max_bytes=1 << 62)  # read and acknowledged, never appended to
        except SpoolLocked:
            log.warning("the spool %s holds samples of this key under an earlier secret, but another "
                        "agent is using it; they stay there", folder)
            return
        delivery = Delivery(spool, self._client, max_samples=self._max_samples,
                            max_bytes=self._max_bytes, backoff=self._backoff)
        delivery.retry_log_level = self.retry_log_level
        self._adopted.append(_Adopted(folder, spool, delivery))
        log.info("the spool %s holds %d samples spooled under an earlier secret of this key (%s of "
                 "account %r, as the server confirms); this run sends them", folder,
                 spool.stats.pending_samples, *self.identity)

    def _drained(self, adopted: _Adopted) -> None:
        stats = adopted.delivery.stats
        self._done_stats.append(stats)
        log.info("sent %d samples spooled under an earlier secret of this key from %s",
                 stats.sent_samples, adopted.folder)
        folder = adopted.folder
        keep = [p.name for p in folder.iterdir() if p.name not in _BOOKKEEPING]
        if adopted.spool.stats.pending_samples or keep:
            adopted.spool.close()  # rejected/ (or anything unknown) stays, with its destination.json
            return
        # Emptied: remove the folder while its lock is still held, so no agent starts on it midway.
        shutil.rmtree(folder, ignore_errors=True)
        adopted.spool.close()

    def close(self) -> None:
        """Release the folders still being drained (what is left stays for the next run)."""
        for adopted in self._adopted:
            adopted.spool.close()
        self._adopted.clear()

"""``POST /v1/gpu/processes/{pid}/signal``: TERM, INT or KILL to one GPU process of this node.

Operator scope. The PID must be a GPU process in a snapshot taken for this request
(404 otherwise); what the server may not signal is a 403 that says why. Every
decided request leaves an audit row (who, what, when, outcome), like a purge: a
signal that goes out is recorded as ``pending`` first, so nothing is ever sent
without its row; when that row cannot be written nothing is sent (503).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from gpufleet.server.api.context import ApiContext
from gpufleet.server.api.gpu import SnapshotSource
from gpufleet.server.api.guard import add_route
from gpufleet.server.auth import OPERATOR
from gpufleet.server.failures import StorageFullError
from gpufleet.server.gpu.signals import ProcessGone, SignalRefused, signal_refusal
from gpufleet.server.http.errors import STORAGE_RETRY_AFTER_S
from gpufleet.server.http.router import Router
from gpufleet.server.http.types import HttpError, Request, Response
from gpufleet.server.schemas import GpuProcess, SignalName, SignalRequest, SignalResult
from gpufleet.server.store.signal_audit import SignalAttempt, SignalOutcome

log = logging.getLogger("gpufleet.api")

T = TypeVar("T")
PID_MAX = 2**31 - 1  # Linux pid_t; a larger number cannot name a process
SIGNAL_PATH = "/v1/gpu/processes/{pid}/signal"


def parse_pid(text: str) -> int:
    """The path's PID: decimal digits naming a possible process, else a 400."""
    if not (text.isascii() and text.isdigit()) or len(text) > 10 or not 0 < int(text) <= PID_MAX:
        raise HttpError(400, f"pid must be a process ID (a whole number from 1 to {PID_MAX})")
    return int(text)


class ProcessRoutes:
    def __init__(self, ctx: ApiContext) -> None:
        self._ctx = ctx
        self._source = SnapshotSource(ctx.backend)

    def register(self, router: Router) -> None:
        add_route(router, self._ctx, "POST", SIGNAL_PATH, self.signal, scope=OPERATOR,
                  name="signalGpuProcess", request_model=SignalRequest,
                  response_model=SignalResult,
                  summary="Send TERM, INT or KILL to one GPU process of this node (audited)")

    async def signal(self, request: Request) -> Response:
        pid = parse_pid(request.path_params.get("pid", ""))
        wanted = SignalRequest.model_validate(request.json())
        snap = await self._source.snapshot()
        entries = [p for p in snap.processes if p.pid == pid]
        attempt = _attempt(request, self._ctx.now(), pid, wanted.signal, entries)
        if not entries:
            message = f"PID {pid} is not a GPU process of this node"
            await self._audit(attempt, "not_found", message)
            raise HttpError(404, message)
        entry = entries[0]
        refusal = _refusal(entry, simulated=self._ctx.backend.simulated)
        if refusal is not None:
            await self._audit(attempt, "refused", refusal)
            raise HttpError(403, f"Not signalled: {refusal}")
        audit_id = await self._audit_pending(attempt)
        label = f"{entry.name}[{pid}]"
        try:
            await asyncio.to_thread(self._ctx.backend.signal_process, entry, wanted.signal)
        except SignalRefused as exc:
            await self._finish(audit_id, attempt, "refused", str(exc))
            raise HttpError(403, f"Not signalled: {exc}") from None
        except ProcessGone as exc:
            await self._finish(audit_id, attempt, "gone", str(exc))
            raise HttpError(404, f"{exc}; it is no longer a GPU process of this node") from None
        except Exception as exc:
            await self._finish(audit_id, attempt, "failed", f"{type(exc).__name__}: {exc}")
            raise
        message = f"sent SIG{wanted.signal} to {label}" + (
            f" of user {entry.user}" if entry.user else "")
        if not await self._finish(audit_id, attempt, "sent", message):
            raise HttpError(500, f"{message}, but its audit row could not be completed "
                                 "(it stays 'pending'); see the server log")
        log.info("%s (key %s)", message, request.key_name or "-")
        return Response.json(SignalResult(
            timestamp=attempt.at, pid=pid, signal=wanted.signal, name=entry.name,
            user=entry.user, command=entry.command, gpu_indices=list(attempt.gpu_indices),
            memory_mb=attempt.memory_mb, message=message, node=snap.node,
        ))

    # ------------------------------------------------------------ audit
    async def _audit(self, attempt: SignalAttempt, outcome: SignalOutcome, detail: str) -> None:
        """One row for a request decided without signalling; a failure is logged, not fatal."""
        store = self._ctx.store
        if store is None:
            log.info("signal audit (no store): %s %s PID %d: %s", attempt.key_name,
                     attempt.signal, attempt.pid, detail)
            return
        try:
            await _in_thread(store.record_signal, attempt, outcome, detail)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("writing the signal audit row failed")

    async def _audit_pending(self, attempt: SignalAttempt) -> int | None:
        store = self._ctx.store
        if store is None:
            return None
        try:
            return await _in_thread(store.record_signal, attempt, "pending",
                                    "about to send the signal")
        except asyncio.CancelledError:
            raise
        except StorageFullError:  # logged once per episode by the store
            raise HttpError(507, "Insufficient storage: the signal audit cannot be written "
                                 "(disk full or I/O error), so nothing was sent; retry later",
                            {"Retry-After": str(STORAGE_RETRY_AFTER_S)}) from None
        except Exception as exc:
            log.exception("writing the signal audit row failed; nothing was sent")
            raise HttpError(503, "The signal audit cannot be written "
                                 f"({type(exc).__name__}); nothing was sent") from None

    async def _finish(self, audit_id: int | None, attempt: SignalAttempt,
                      outcome: SignalOutcome, detail: str) -> bool:
        store = self._ctx.store
        if store is None or audit_id is None:
            log.info("signal audit (no store): %s %s PID %d: %s: %s", attempt.key_name,
                     attempt.signal, attempt.pid, outcome, detail)
            return True
        try:
            await _in_thread(store.finish_signal, audit_id, outcome, detail)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("completing signal audit row %d (%s) failed", audit_id, outcome)
            return False
        return True


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    # Shielded: a cancelled request must not drop its audit row (the thread writes it anyway).
    return await asyncio.shield(asyncio.ensure_future(asyncio.to_thread(fn, *args)))


def _refusal(entry: GpuProcess, *, simulated: bool) -> str | None:
    """Why the server may not signal ``entry``; a simulated PID is only ever not visible."""
    if simulated:
        return None if entry.visible else signal_refusal(entry)
    return signal_refusal(entry)


def _attempt(request: Request, at: datetime, pid: int, signal: SignalName,
             entries: list[GpuProcess]) -> SignalAttempt:
    entry = entries[0] if entries else None
    memory = [e.memory_mb for e in entries if e.memory_mb is not None]
    return SignalAttempt(
        account=request.account or "", key_name=request.key_name, at=at, pid=pid, signal=signal,
        process_name=entry.name if entry else None, process_user=entry.user if entry else None,
        command=entry.command if entry else None,
        gpu_indices=tuple(sorted({e.gpu_index for e in entries if e.gpu_index is not None})),
        memory_mb=sum(memory) if memory else None,
    )

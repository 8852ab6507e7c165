"""The audit trail of signals sent to GPU processes: who asked, what, when, and what came of it.

A signal that is going to be sent is written first with the outcome ``pending`` and
completed afterwards (``sent``, ``gone``, ``refused`` or ``failed``), so a signal never
leaves without its row, and a crash in between leaves a row that says so. Requests
refused before anything is sent (``not_found``, ``refused``) are one row each.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import duckdb

from gpufleet.server.store.timeutil import from_db, to_db

SignalOutcome = Literal["pending", "sent", "gone", "refused", "not_found", "failed"]
DETAIL_MAX_CHARS = 1000  # a reason is a sentence; a runaway message must not bloat the store
TEXT_MAX_CHARS = 4096  # a command line as the process table shows it, cut


@dataclass(frozen=True, slots=True)
class SignalAttempt:
    """What an operator asked to signal, as the node saw it at that moment."""

    account: str
    key_name: str | None
    at: datetime
    pid: int
    signal: str
    process_name: str | None = None
    process_user: str | None = None
    command: str | None = None
    gpu_indices: tuple[int, ...] = ()
    memory_mb: int | None = None


def _cut(text: str | None, limit: int) -> str | None:
    return None if text is None else text[:limit]


def write_signal(con: duckdb.DuckDBPyConnection, attempt: SignalAttempt,
                 outcome: SignalOutcome, detail: str) -> int:
    row = con.execute(
        """INSERT INTO signal_audit VALUES (nextval('signal_audit_seq'), ?, ?, ?, ?, ?, ?, ?, ?, ?,
                                            ?, ?, ?) RETURNING id""",
        [attempt.account, attempt.key_name, to_db(attempt.at), attempt.pid, attempt.signal,
         _cut(attempt.process_name, TEXT_MAX_CHARS), _cut(attempt.process_user, TEXT_MAX_CHARS),
         _cut(attempt.command, TEXT_MAX_CHARS), list(attempt.gpu_indices), attempt.memory_mb,
         outcome, _cut(detail, DETAIL_MAX_CHARS)],
    ).fetchone()
    return int(row[0])


def finish_signal(con: duckdb.DuckDBPyConnection, audit_id: int, outcome: SignalOutcome,
                  detail: str) -> None:
    con.execute("UPDATE signal_audit SET outcome = ?, detail = ? WHERE id = ?",
                [outcome, _cut(detail, DETAIL_MAX_CHARS), audit_id])


def read_signals(cur: duckdb.DuckDBPyConnection, account: str, limit: int) -> list[dict[str, Any]]:
    rows = cur.execute(
        """SELECT id, key_name, signalled_at, pid, signal, process_name, process_user, command,
                  gpu_indices, memory_mb, outcome, detail
           FROM signal_audit WHERE account = ? ORDER BY id DESC LIMIT ?""",
        [account, limit],
    ).fetchall()
    return [
        {"id": i, "key_name": k, "at": from_db(at), "pid": pid, "signal": sig, "process_name": name,
         "process_user": user, "command": command, "gpu_indices": list(gpus or []),
         "memory_mb": memory, "outcome": outcome, "detail": detail}
        for i, k, at, pid, sig, name, user, command, gpus, memory, outcome, detail in rows
    ]

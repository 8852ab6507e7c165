"""MetricsStore: gpufleet's DuckDB file — keys, samples, hosts, purge audit, chargeback.

Threading: one writer thread owns every write (``store.writer``); the blocking
methods here are synchronous and safe to call from any thread — the API layer
runs them with ``asyncio.to_thread``. ``await store.writer.submit(...)`` is the
one async-facing call. Reads use their own cursors, so they run concurrently.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb

from gpufleet.server.config import Pricing
from gpufleet.server.files import make_private_dir
from gpufleet.server.schemas import (
    ChargebackReport,
    Heartbeat,
    HostInfo,
    KeyCreated,
    KeyInfo,
    PurgeResult,
)
from gpufleet.server.store import chargeback as cb
from gpufleet.server.store import hosts, signal_audit, simulated, usage_sql
from gpufleet.server.store.keys import KeyStore
from gpufleet.server.store.pending import fold_on_open
from gpufleet.server.store.schema import current_version, migrate
from gpufleet.server.store.writer import RollupParams, StoreWriter

log = logging.getLogger("gpufleet.store")

DEFAULT_INTERVAL_S = 60.0
DEFAULT_IDLE_PCT = 5.0


class StoreLockedError(RuntimeError):
    """Another process holds the DuckDB file (DuckDB allows one writing process).

    The message names the holder (``gpufleet serve (pid 123)``) in plain words; DuckDB's
    own text is kept in ``detail`` for logs, never shown to a person.
    """

    def __init__(self, path: Path, pid: int | None, detail: str) -> None:
        from gpufleet.server.store.holder import describe_holder

        self.path = path
        self.pid = pid
        self.detail = detail
        self.holder = describe_holder(pid)
        super().__init__(f"the store {path} is in use by {self.holder}")


_PID_RE = re.compile(r"PID (\d+)")


class MetricsStore:
    """Open with ``MetricsStore.open(path)``; close with ``close()`` (flushes queued writes)."""

    def __init__(self, path: Path, con: duckdb.DuckDBPyConnection, rollup: RollupParams) -> None:
        self.path = path
        self._root = con
        self._root_lock = threading.Lock()
        self._rollup = rollup
        self.writer = StoreWriter(con.cursor(), rollup)
        self.keys = KeyStore(self.writer, self._cursor)
        self._closed = False
        with self._cursor() as cur:
            self._simulated: simulated.SimulatedMark | None = simulated.read_mark(cur)

    @classmethod
    def open(cls, path: Path | str, *, expected_interval_s: float = DEFAULT_INTERVAL_S,
             idle_utilization_pct: float = DEFAULT_IDLE_PCT) -> MetricsStore:
        """Open (creating and migrating) the store; raises StoreLockedError if another process has it."""
        path = Path(path)
        on_disk = str(path) != ":memory:"
        if on_disk:
            make_private_dir(path.parent)
        try:
            con = _connect_private(path) if on_disk else duckdb.connect(str(path))
        except duckdb.IOException as exc:
            match = _PID_RE.search(str(exc))
            if "lock" in str(exc).lower():
                raise StoreLockedError(path, int(match.group(1)) if match else None, str(exc)) from None
            raise
        con.execute("SET GLOBAL TimeZone = 'UTC'")
        older = current_version(con) > 0 and not simulated.has_mark_table(con)
        migrate(con)
        if older:
            _mark_older_demo(con)
        default = RollupParams(round(expected_interval_s * 1e6), idle_utilization_pct)
        fold_on_open(con, default.cap_us, default.idle_pct)  # rows a crash left pending
        rollup = _ensure_rollup(con, default)
        if on_disk:
            _restrict_wal(path)
        return cls(path, con, rollup)

    # ---------------------------------------------------------------- basics

    @property
    def rollup_params(self) -> RollupParams:
        """The interval and idle threshold the usage rollup is kept with."""
        return self._rollup

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._root_lock:
            cur = self._root.cursor()
        try:
            yield cur
        finally:
            cur.close()

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """A read-only query on its own cursor (tests, benches, diagnostics); the rollup is current."""
        self.writer.sync_rollup()
        with self._cursor() as cur:
            return cur.execute(sql, params).fetchall()

    @property
    def simulated(self) -> simulated.SimulatedMark | None:
        """Since when, and from what, this store holds simulated data; None for real data only."""
        return self._simulated

    def mark_simulated(self, source: str, at: datetime | None = None) -> simulated.SimulatedMark:
        """Record, before writing them, that simulated data from ``source`` goes into this store."""
        mark = self._simulated
        if mark is not None and source in mark.sources:
            return mark
        when = at or datetime.now(UTC)
        mark = self.writer.call(lambda con: simulated.write_mark(con, source, when))
        if self._simulated is None:
            log.info("the store %s now holds simulated data (%s); every report from it says so",
                     self.path, source)
        self._simulated = mark
        return mark

    def remove_sample_fleet(self, uuids: list[str], hostnames: list[str]) -> tuple[int, int]:
        """Delete the sample fleet's samples, usage and hosts (``gpufleet demo reset --db``)."""
        self.writer.sync_rollup()
        removed = self.writer.call(lambda con: simulated.remove_sample_fleet(con, uuids, hostnames))
        with self._cursor() as cur:
            self._simulated = simulated.read_mark(cur)
        return removed

    def sample_count(self, account: str | None = None) -> int:
        rows = self.query("SELECT count(*) FROM samples WHERE ? IS NULL OR account = ?", [account, account])
        return int(rows[0][0])

    def close(self) -> None:
        """Flush queued writes and key use times, then close the file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.writer.call(self.keys.flush_last_used)
        except Exception as exc:  # closing must not fail on bookkeeping
            log.warning("could not write key use times on close: %s", exc)
        self.writer.close()
        with self._root_lock:
            self._root.close()

    def __enter__(self) -> MetricsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ keys

    def create_key(self, name: str, scopes: list[str], account: str) -> KeyCreated:
        return self.keys.create(name, scopes, account)

    def list_keys(self, account: str | None = None) -> list[KeyInfo]:
        return self.keys.list(account)

    def revoke_key(self, id_or_name: str, account: str | None = None) -> KeyInfo:
        return self.keys.revoke(id_or_name, account)

    def rotate_key(self, key_id: str, account: str | None = None, *,
                   presented_secret: str | None = None) -> KeyCreated:
        return self.keys.rotate(key_id, account, presented_secret=presented_secret)

    def authenticate(self, secret: str) -> KeyInfo | None:
        return self.keys.authenticate(secret)

    # ---------------------------------------------------------------- hosts

    def record_heartbeat(self, account: str, hb: Heartbeat, at: datetime) -> None:
        self.writer.call(lambda con: hosts.write_heartbeat(con, account, hb, at))

    def list_hosts(self, account: str, now: datetime, heartbeat_interval_s: float) -> list[HostInfo]:
        self.writer.sync_rollup()  # last sample times come from gpu_last
        with self._cursor() as cur:
            return hosts.read_hosts(cur, account, now, heartbeat_interval_s)

    def record_purge(self, account: str, key_name: str | None, force: bool, result: PurgeResult) -> int:
        return self.writer.call(lambda con: hosts.write_purge(con, account, key_name, force, result))

    def list_purges(self, account: str, limit: int = 50) -> list[dict[str, Any]]:
        with self._cursor() as cur:
            return hosts.read_purges(cur, account, limit)

    def record_signal(self, attempt: signal_audit.SignalAttempt,
                      outcome: signal_audit.SignalOutcome, detail: str) -> int:
        """Commit one signal audit row; returns its id (``finish_signal`` completes a pending one)."""
        return self.writer.call(lambda con: signal_audit.write_signal(con, attempt, outcome, detail))

    def finish_signal(self, audit_id: int, outcome: signal_audit.SignalOutcome, detail: str) -> None:
        self.writer.call(lambda con: signal_audit.finish_signal(con, audit_id, outcome, detail))

    def list_signals(self, account: str, limit: int = 50) -> list[dict[str, Any]]:
        with self._cursor() as cur:
            return signal_audit.read_signals(cur, account, limit)

    # ------------------------------------------------------------ chargeback

    def usage_rows(self, account: str, from_date: date, to_date: date, pricing: Pricing) -> list[cb.UsageRow]:
        return cb.usage_rows(self.raw_usage(account, from_date, to_date, pricing), pricing)

    def raw_usage(self, account: str, from_date: date, to_date: date,
                  pricing: Pricing) -> list[tuple[str, str, str, float, float, float, float]]:
        """Unrounded sums per (team, model, gpu_name): covered µs, energy J, idle µs and
        shared µs ('' = absent); shares of a shared GPU's time are fractions of a µs."""
        cb.check_range(from_date, to_date)
        self.writer.sync_rollup()
        p0, p1 = cb.period_bounds_us(from_date, to_date)
        interval_us = round(pricing.expected_interval_s * 1e6)
        params: dict[str, Any] = {
            "account": account, "p0": p0, "p1": p1, "interval_us": interval_us,
            "idle_pct": pricing.idle_utilization_pct,
        }
        if interval_us == self._rollup.interval_us and pricing.idle_utilization_pct == self._rollup.idle_pct:
            sql = usage_sql.REPORT_FROM_ROLLUP
            params.update(from_day=from_date, to_day=to_date)
        else:  # the rollup was built with other parameters: compute from raw samples
            sql = usage_sql.REPORT_FROM_SAMPLES
            params["cap_us"] = 2 * interval_us
        with self._cursor() as cur:
            return cur.execute(sql, params).fetchall()

    def chargeback(self, account: str, from_date: date, to_date: date, pricing: Pricing,
                   now: datetime | None = None) -> ChargebackReport:
        rows = self.usage_rows(account, from_date, to_date, pricing)
        report = cb.build_report(rows, from_date, to_date, now or datetime.now(UTC))
        return report.model_copy(update={"simulated": self._simulated is not None})

    def chargeback_csv(self, account: str, from_date: date, to_date: date, pricing: Pricing,
                       now: datetime | None = None) -> str:
        return cb.rows_csv(self.usage_rows(account, from_date, to_date, pricing))

    def chargeback_from_samples(self, account: str, from_date: date, to_date: date,
                                pricing: Pricing) -> list[cb.UsageRow]:
        """The reference computation over raw samples, bypassing the rollup (tests, audits)."""
        cb.check_range(from_date, to_date)
        self.writer.sync_rollup()  # gpu_last bounds the raw computation
        p0, p1 = cb.period_bounds_us(from_date, to_date)
        interval_us = round(pricing.expected_interval_s * 1e6)
        params = {"account": account, "p0": p0, "p1": p1, "interval_us": interval_us,
                  "cap_us": 2 * interval_us, "idle_pct": pricing.idle_utilization_pct}
        with self._cursor() as cur:
            raw = cur.execute(usage_sql.REPORT_FROM_SAMPLES, params).fetchall()
        return cb.usage_rows(raw, pricing)

    def rebuild_rollup(self) -> None:
        """Recompute the whole usage rollup from raw samples (after bulk loads)."""
        params = {"cap_us": self._rollup.cap_us, "idle_pct": self._rollup.idle_pct}

        def rebuild(con: duckdb.DuckDBPyConnection) -> None:
            con.execute("DELETE FROM usage_daily")
            con.execute(usage_sql.REBUILD_ALL, params)

        self.writer.call(rebuild)


def _mark_older_demo(con: duckdb.DuckDBPyConnection) -> None:
    """A store from before the simulated mark that holds the sample fleet is marked now."""
    from gpufleet.server.sample import sample_fleet_gpu_uuids

    mark = simulated.mark_older_demo(con, sample_fleet_gpu_uuids())
    if mark is not None:
        log.warning("this store holds the sample fleet's simulated telemetry (an older gpufleet's "
                    "console demo wrote it here); every report from it says so")


def _connect_private(path: Path) -> duckdb.DuckDBPyConnection:
    """Connect with umask 0o077, so a new store file is owner-only from its first byte.

    The umask is process-wide, so it is narrowed around the connect alone. A store file
    from before (or copied in) is narrowed to 0600 too: key hashes and telemetry.
    """
    previous = os.umask(0o077)
    try:
        con = duckdb.connect(str(path))
    finally:
        os.umask(previous)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)
    return con


def _restrict_wal(path: Path) -> None:
    """Narrow the write-ahead log to 0600, and warn when the folder does not protect it.

    DuckDB deletes its ``.wal`` at each checkpoint and creates it again under the
    process umask, so only an owner-only folder (as created here) keeps later ones private.
    """
    with contextlib.suppress(FileNotFoundError):
        os.chmod(path.with_name(path.name + ".wal"), 0o600)
    with contextlib.suppress(OSError):
        if path.parent.stat().st_mode & 0o077 and _current_umask() & 0o077 != 0o077:
            log.warning("the store's folder %s is open to other users, and the store's write-ahead "
                        "log is recreated with the process umask: keep the store in an owner-only "
                        "folder (chmod 700)", path.parent)


def _current_umask() -> int:
    """The process umask (reading it means setting it; 0o077 meanwhile only narrows)."""
    current = os.umask(0o077)
    os.umask(current)
    return current


def _ensure_rollup(con: duckdb.DuckDBPyConnection, wanted: RollupParams) -> RollupParams:
    """The rollup's parameters; a store first opened with other ones is rebuilt to these."""
    row = con.execute("SELECT interval_us, idle_utilization_pct FROM rollup_meta").fetchone()
    method = con.execute(
        "SELECT comment FROM duckdb_tables() WHERE table_name = 'usage_daily' AND schema_name = 'main'"
    ).fetchone()
    same_rule = method is not None and method[0] == usage_sql.ROLLUP_METHOD
    if same_rule and row is not None and (int(row[0]), float(row[1])) == (wanted.interval_us, wanted.idle_pct):
        return wanted
    if wanted.cap_us > usage_sql.DAY_US:
        raise ValueError("expected_interval_s must be at most 12 hours")
    con.begin()
    try:
        con.execute("DELETE FROM rollup_meta")
        con.execute("INSERT INTO rollup_meta VALUES (?, ?)", [wanted.interval_us, wanted.idle_pct])
        con.execute("DELETE FROM usage_daily")
        con.execute(usage_sql.REBUILD_ALL, {"cap_us": wanted.cap_us, "idle_pct": wanted.idle_pct})
        con.execute(f"COMMENT ON TABLE usage_daily IS '{usage_sql.ROLLUP_METHOD}'")
        con.commit()
    except BaseException:
        con.rollback()
        raise
    if row is not None:
        log.info("usage rollup rebuilt (%s, a %.0f s interval)", usage_sql.ROLLUP_METHOD,
                 wanted.interval_us / 1e6)
    return wanted




"""The store's single write path: one thread owns the write connection.

Sample batches submitted concurrently are written in ONE transaction (group
commit). Each batch is made ready where it is submitted (``staging.JsonStager``:
serialised to a JSON file, summarised per GPU), so the thread mostly runs SQL:
it drains its queue, reads the group's files with DuckDB's JSON reader (no
per-value Python conversion, no GIL held while DuckDB parses), COMMITs, and
only then resolves every waiter. A group whose samples are all new and newer
than their GPU's stored tail (live agents) is inserted as is and its rollup
upkeep deferred (folded in batches, see ``pending``); any other group
(duplicates, late samples) first folds what is pending, then dedups on a
sample's identity (account, gpu_uuid, timestamp and workload, see ``shares``)
through the ``staging`` table, refuses a batch whose ``gpu_fraction`` values
would push a GPU's shares at one time over 1 with what is stored (that batch
alone, with GpuShareError), and keeps the rollup in SQL. A failure rolls the whole group back; a group of several batches
is then written batch by batch, so only the batch that fails gets the exception.
A fold that fails is healed by the catch-up the store runs at open (every sample
since the durable mark that is newer than its GPU's tail), so one bad fold never
stalls later groups; while even that fails, fresh groups still land, groups that
need the rollup and reports get ``RollupBehindError``. A full disk (or another
I/O error on write) is ``StorageFullError``, logged once per episode. Other writes
(keys, heartbeats, purge audit) are jobs on the same thread, run after folding
what is pending, so the process has exactly one writer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import duckdb

from gpufleet.server.failures import RollupBehindError, StorageFullError
from gpufleet.server.store import pending, usage_sql
from gpufleet.server.store.shares import OVER_SHARE_SUM, GpuShareError
from gpufleet.server.store.staging import (
    SAMPLE_FIELDS,
    STAGING_DDL,
    JsonStager,
    Key,
    Range,
    SampleKeys,
    StagedBatch,
    TailCache,
    timestamps_us,
)

log = logging.getLogger("gpufleet.store.writer")

T = TypeVar("T")

__all__ = ["SAMPLE_FIELDS", "RollupParams", "SampleKeys", "StoreClosedError", "StoreWriter", "WriteResult"]

_SAMPLE_COLUMNS = ", ".join(SAMPLE_FIELDS)
MAX_GROUP_SAMPLES = 200_000  # one transaction stays bounded in memory
# When deferred rollup upkeep is folded in: after this long without work, after
# this long since the oldest pending row, or at this many pending rows.
FOLD_WHEN_IDLE_S = 0.1
FOLD_AFTER_S = 1.0
FOLD_AT_ROWS = 200_000
# After a fold and its catch-up both failed, idle and threshold folds wait this long
# (groups and reports that need the rollup still try at once).
FOLD_RETRY_S = 5.0


@dataclass(frozen=True)
class WriteResult:
    inserted: int
    duplicates: int


class StoreClosedError(RuntimeError):
    """The store is closed; nothing more can be written."""


@dataclass
class _SampleJob:
    batch: StagedBatch
    done: Callable[[WriteResult | None, BaseException | None], None]


@dataclass
class _CallJob:
    fn: Callable[[duckdb.DuckDBPyConnection], Any]
    done: Callable[[Any, BaseException | None], None]
    transaction: bool = True
    needs_rollup: bool = False  # RollupBehindError unless every pending row could be folded


@dataclass
class RollupParams:
    interval_us: int
    idle_pct: float

    @property
    def cap_us(self) -> int:
        return 2 * self.interval_us


@dataclass
class _Stop:
    done: threading.Event = field(default_factory=threading.Event)


class StoreWriter:
    """Owns the write connection; blocking for the sync API, awaitable for samples."""

    def __init__(self, con: duckdb.DuckDBPyConnection, rollup: RollupParams) -> None:
        self._con = con
        self._rollup = rollup
        self._queue: queue.SimpleQueue[_SampleJob | _CallJob | _Stop] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        self._con.execute("SET TimeZone = 'UTC'")
        self._con.execute(STAGING_DDL)
        self._stager = JsonStager()
        # samples stored but not folded in (the store folded a crash's leftovers at open):
        # each GPU's range, their count, and the durable mark below them (see ``pending``)
        self._pending: dict[Key, Range] = {}
        self._pending_rows = 0
        self._pending_shared: set[Key] = set()  # of those GPUs, the shared ones (see ``pending.fold``)
        self._pending_since = time.monotonic()
        self._marked_us: int | None = None
        self._tails = TailCache(lambda: self._pending)
        # totals for /metrics, written by the writer thread only (reading an int is safe)
        self.samples_inserted = 0
        self.samples_duplicate = 0
        self._fold_error: str | None = None  # the current episode of failing folds, if any
        self._fold_retry_at = 0.0
        self._storage_error: str | None = None  # the current episode of failing writes, if any
        self.storage_failed_at: float | None = None  # monotonic time of the last failed write
        self._thread = threading.Thread(target=self._run, name="gpufleet-store-writer", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- API

    @property
    def pending_rows(self) -> int:
        """Acknowledged samples not yet folded into the rollup and the tail (0 when current)."""
        return self._pending_rows

    @property
    def queue_depth(self) -> int:
        """Jobs (sample groups, calls) waiting for the writer thread."""
        return self._queue.qsize()

    @property
    def alive(self) -> bool:
        """Whether the writer thread runs (False after ``close`` or if it died)."""
        return self._thread.is_alive()

    @property
    def fold_lag_s(self) -> float:
        """How long the oldest acknowledged sample not yet in the rollup has waited (0 when current)."""
        return time.monotonic() - self._pending_since if self._pending_rows else 0.0

    @property
    def storage_error(self) -> str | None:
        """Why the last write failed for want of storage, until a write succeeds again."""
        return self._storage_error

    @property
    def staging_folder(self) -> str:
        """The folder the writer stages its groups' files in."""
        return self._stager.folder

    async def submit(self, account: str, samples: Sequence[dict[str, Any]], received_at: datetime,
                     keys: SampleKeys | None = None) -> WriteResult:
        """Store validated samples; resolves after COMMIT with inserted + duplicates == len(samples).

        ``timestamp`` may be a datetime (naive = UTC) or an ISO-8601 string; other values
        must be JSON-typed (what ``validate_batch`` returns is). ``keys``, when the caller
        has them: every sample's gpu_uuid and timestamp in µs, in order (saves the writer
        thread reading them back from the dicts).
        """
        if not samples:
            return WriteResult(0, 0)
        self._check_open()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[WriteResult] = loop.create_future()

        try:
            batch = self._stager.prepare(account, received_at, samples, keys)
        except OSError as exc:  # the staging folder's filesystem is full
            raise self._storage_failure(exc) or exc from None
        release = self._stager.release

        def done(result: WriteResult | None, exc: BaseException | None) -> None:
            # the file goes once the writer is done with it, even if the waiter was cancelled
            try:
                loop.call_soon_threadsafe(_settle, future, result, exc, lambda: release(batch))
            except RuntimeError:  # the waiter's event loop is gone: nobody to tell
                release(batch)

        try:
            self._put(_SampleJob(batch, done))
        except BaseException:
            release(batch)
            raise
        try:
            return await future
        except GpuShareError as exc:  # the writer knows the GPU and time; the batch, the index
            raise exc.located(samples, keys[1] if keys else timestamps_us(samples)) from None

    def submit_sync(self, account: str, samples: Sequence[dict[str, Any]], received_at: datetime) -> WriteResult:
        """The blocking form of ``submit`` for threads without an event loop (loaders, CLI)."""
        if not samples:
            return WriteResult(0, 0)
        self._check_open()
        future: concurrent.futures.Future[WriteResult] = concurrent.futures.Future()
        batch = self._stager.prepare(account, received_at, samples)
        try:
            self._put(_SampleJob(batch, _resolver(future)))
            return future.result()
        except GpuShareError as exc:
            raise exc.located(samples, timestamps_us(samples)) from None
        finally:
            self._stager.release(batch)

    def call(self, fn: Callable[[duckdb.DuckDBPyConnection], T], *, transaction: bool = True) -> T:
        """Run ``fn(write_connection)`` on the writer thread (in a transaction) and return its result.

        Deferred rollup upkeep is folded in first, so ``fn`` sees a current rollup and tail.
        """
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._put(_CallJob(fn, _resolver(future), transaction))
        return future.result()

    def sync_rollup(self) -> None:
        """Return once every acknowledged sample is in ``usage_daily`` and ``gpu_last``.

        Raises RollupBehindError (or StorageFullError) when they cannot be folded in now:
        a report from a stale rollup would be wrong without saying so.
        """
        if self._pending_rows:
            future: concurrent.futures.Future[None] = concurrent.futures.Future()
            self._put(_CallJob(_nothing, _resolver(future), False, needs_rollup=True))
            future.result()

    def post(self, fn: Callable[[duckdb.DuckDBPyConnection], Any]) -> None:
        """Queue ``fn`` on the writer thread without waiting (best-effort bookkeeping)."""

        def done(_result: Any, exc: BaseException | None) -> None:
            if exc is not None:
                log.warning("background store write failed: %s", exc)

        try:
            self._put(_CallJob(fn, done))
        except StoreClosedError:
            log.debug("store closed; background write dropped")

    def close(self) -> None:
        """Write everything queued, fold what is pending, then stop the thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            stop = _Stop()
            self._queue.put(stop)
        stop.done.wait()
        self._thread.join()
        self._stager.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("the store is closed")

    def _put(self, job: _SampleJob | _CallJob) -> None:
        with self._lock:
            if self._closed:
                raise StoreClosedError("the store is closed")
            self._queue.put(job)

    # -------------------------------------------------------------- thread

    def _next_job(self) -> _SampleJob | _CallJob | _Stop:
        """The next job; while rows are pending, fold them whenever the queue runs idle."""
        while self._pending_rows:
            try:
                return self._queue.get(timeout=FOLD_WHEN_IDLE_S)
            except queue.Empty:
                self._fold(now=False)
        return self._queue.get()

    def _run(self) -> None:
        pending_job: _SampleJob | _CallJob | _Stop | None = None
        while True:
            job = pending_job or self._next_job()
            pending_job = None
            if isinstance(job, _Stop):
                self._fold()
                job.done.set()
                return
            if isinstance(job, _CallJob):
                self._fold(now=job.needs_rollup)
                self._run_call(job)
                self._tails.invalidate()  # it may have written samples or tails
                continue
            group = [job]
            size = job.batch.count
            while size < MAX_GROUP_SAMPLES:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if not isinstance(nxt, _SampleJob):
                    pending_job = nxt  # keep order: run it right after this group
                    break
                group.append(nxt)
                size += nxt.batch.count
            self._run_group(group)
            if self._pending_rows >= FOLD_AT_ROWS or (
                    self._pending_rows and time.monotonic() - self._pending_since >= FOLD_AFTER_S):
                self._fold(now=False)

    def _fold(self, *, now: bool = True) -> bool:
        """Fold deferred rollup upkeep in, in its own transaction; on failure, catch up.

        ``now=False`` (idle and threshold folds) waits out FOLD_RETRY_S after a failure.
        False when the rows stay pending (they are durable: a later fold or open gets them).
        """
        if not self._pending_rows:
            return True
        if not now and time.monotonic() < self._fold_retry_at:
            return False
        con = self._con
        try:
            con.begin()
            pending.fold(con, self._pending, self._rollup.cap_us, self._rollup.idle_pct,
                         self._pending_shared)
            con.commit()
        except Exception as exc:
            _rollback(con)
            return self._catch_up(exc)
        self._folded()
        return True

    def _catch_up(self, cause: Exception) -> bool:
        """After a failed fold: the store's own catch-up from the durable mark (as at open).

        It reads what is pending from the store, not from the writer's ranges, so a
        range the fold could not use (or any fold-only fault) does not stop it.
        """
        con = self._con
        try:
            con.begin()
            pending.catch_up(con, self._rollup.cap_us, self._rollup.idle_pct)
            con.commit()
        except Exception as exc:
            _rollback(con)
            self._fold_retry_at = time.monotonic() + FOLD_RETRY_S
            if self._fold_error is None:
                self._fold_error = str(exc)
                log.error("folding %d pending rows into the usage rollup failed (%s), and so did "
                          "catching up from the store (%s); they stay pending (stored, not yet in "
                          "reports), retried every %.0f s and before each report",
                          self._pending_rows, cause, exc, FOLD_RETRY_S)
            self._storage_failure(exc)
            return False
        log.warning("folding %d pending rows into the usage rollup failed (%s); caught up from "
                    "the store instead", self._pending_rows, cause)
        self._folded()
        self._tails.invalidate()
        return True

    def _folded(self) -> None:
        if self._fold_error is not None:
            log.info("the usage rollup is current again")
            self._fold_error = None
        self._pending = {}
        self._pending_rows = 0
        self._pending_shared = set()
        self._marked_us = None

    def _storage_failure(self, exc: BaseException) -> StorageFullError | None:
        """``exc`` as a StorageFullError when it is one (logged once per episode), else None."""
        failure = storage_failure(exc)
        if failure is None:
            return None
        self.storage_failed_at = time.monotonic()
        if self._storage_error is None:
            log.error("the store cannot write: %s; writes are answered 507 until one succeeds", exc)
        self._storage_error = str(failure)
        return failure

    def _wrote(self) -> None:
        if self._storage_error is not None:
            log.info("the store writes again")
            self._storage_error = None

    def _run_call(self, job: _CallJob) -> None:
        con = self._con
        try:
            if job.needs_rollup and self._pending_rows:
                raise self._storage_error_or(RollupBehindError(
                    f"the usage rollup is behind ({self._pending_rows} stored samples not yet "
                    f"folded in: {self._fold_error})"))
            if job.transaction:
                con.begin()
            result = job.fn(con)
            if job.transaction:
                con.commit()
        except BaseException as exc:
            if job.transaction:
                _rollback(con)
            _answer(job.done, None, self._storage_failure(exc) or exc)
            return
        if job.transaction:
            self._wrote()
        _answer(job.done, result, None)

    def _run_group(self, group: list[_SampleJob]) -> None:
        """Write a group; if it fails, write its batches one by one so one bad batch fails alone."""
        failure = self._write_group(group)
        if failure is None:
            return
        if len(group) > 1 and not isinstance(failure, StorageFullError | RollupBehindError):
            log.warning("sample write of %d batches rolled back (%s); writing them one by one",
                        len(group), failure)
            for job in group:
                alone = self._write_group([job])
                if alone is not None:
                    log.warning("sample batch of %d rolled back: %s", job.batch.count, alone)
                    _answer(job.done, None, alone)
            return
        if not isinstance(failure, StorageFullError):  # those are logged once per episode
            log.warning("sample write of %d batches rolled back: %s", len(group), failure)
        for job in group:
            _answer(job.done, None, failure)

    def _write_group(self, group: list[_SampleJob]) -> BaseException | None:
        """One transaction for ``group``; answers its waiters on COMMIT, else returns the failure."""
        con = self._con
        batches = [job.batch for job in group]
        newest = None
        refused: dict[int, GpuShareError] = {}
        try:
            newest = self._tails.newest_if_fresh(con, [(b.account, b.ranges) for b in batches])
            if newest is None and not self._fold():
                # the careful path keeps the rollup itself: it must start current
                raise self._storage_error_or(RollupBehindError(
                    f"the usage rollup could not be brought up to date: {self._fold_error}"))
            mark_us = None
            con.begin()
            if newest is not None:
                write_fresh(con, self._stager.source(batches))
                low = min(lo for lo, _hi, _n in newest.values())
                if self._marked_us is None or low < self._marked_us:
                    mark_us = low - pending.MARK_MARGIN_US
                    pending.mark(con, mark_us)
                counts = {b.job: b.staged if b.staged >= 0 else b.count for b in batches}
            else:
                self._stager.stage(con, batches)
                counts, refused = write_careful(con, self._rollup)
                con.execute("DELETE FROM staging")
            con.commit()
        except BaseException as exc:
            _rollback(con)
            self._tails.invalidate()
            return self._storage_failure(exc) or exc
        self._wrote()
        if newest is not None:
            if not self._pending_rows:
                self._pending_since = time.monotonic()
            self._pending_rows += sum(counts.values())
            if mark_us is not None:
                self._marked_us = mark_us
            self._tails.advance(newest)
            _merge(self._pending, newest)
            self._pending_shared.update((b.account, uuid) for b in batches for uuid in b.shared_gpus)
        else:
            self._tails.invalidate()
        for job in group:
            if job.batch.job in refused:
                _answer(job.done, None, refused[job.batch.job])
                continue
            inserted = counts.get(job.batch.job, 0)
            self.samples_inserted += inserted
            self.samples_duplicate += job.batch.count - inserted
            _answer(job.done, WriteResult(inserted, job.batch.count - inserted), None)
        return None

    def _storage_error_or(self, exc: BaseException) -> BaseException:
        """A StorageFullError while the last failure was one (a full disk stops folds too)."""
        if self._storage_error is not None:
            return StorageFullError(self._storage_error)
        return exc


def write_careful(con: duckdb.DuckDBPyConnection, rollup: RollupParams
                  ) -> tuple[dict[int, int], dict[int, GpuShareError]]:
    """Inside an open transaction, ``staging`` loaded and nothing pending: dedup, insert, roll up.

    The path for groups with duplicates or samples older than their GPU's tail (resends,
    late agents, a workload's row for a time already stored); returns inserted rows per
    job, and the jobs refused because their fractions would push a GPU's shares at some
    time over 1 (their rows are left out; the rest of the group is written).
    """
    refused: dict[int, GpuShareError] = {}
    while True:
        _candidates(con, list(refused))
        problem = _first_share_problem(con)
        if problem is None:
            break
        job, uuid, ts_us, total, stored = problem
        refused[int(job)] = GpuShareError(uuid, int(ts_us), float(total), stored=float(stored))
    con.execute("CREATE OR REPLACE TEMP VIEW cand AS SELECT * FROM cand_rows")
    params = {"cap_us": rollup.cap_us, "idle_pct": rollup.idle_pct}
    con.execute(
        f"""INSERT INTO samples (account, ts, {_SAMPLE_COLUMNS}, received_at)
            SELECT account, ts, {_SAMPLE_COLUMNS}, received_at FROM cand"""
    )
    con.execute(usage_sql.APPEND_IN_ORDER, params)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE redo AS
        SELECT account, gpu_uuid, epoch_us(date_trunc('day', min(ts))) - 86400000000 AS from_us
        FROM cand WHERE ooo GROUP BY ALL
    """)
    if con.execute("SELECT count(*) FROM redo").fetchone()[0]:
        con.execute(usage_sql.DELETE_REDO_DAYS)
        con.execute(usage_sql.RECOMPUTE_REDO, params)
    usage_sql.update_tails(con)
    rows = con.execute("SELECT job, count(*) FROM cand GROUP BY job").fetchall()
    return {int(job): int(n) for job, n in rows}, refused


def _candidates(con: duckdb.DuckDBPyConnection, refused: list[int]) -> None:
    """``cand_rows``: the staged rows of jobs not refused, the first of each identity
    (account, gpu_uuid, ts, workload), less those already stored; ``ooo`` marks rows not
    newer than their GPU's tail (only those can already be stored)."""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE cand_rows AS
        SELECT st.job, st.account, st.ts, {_STAGED}, st.received_at,
               coalesce(st.ts <= g.ts, false) AS ooo
        FROM staging st
        LEFT JOIN gpu_last g ON g.account = st.account AND g.gpu_uuid = st.gpu_uuid
        WHERE NOT list_contains($refused, st.job)
        QUALIFY row_number() OVER (PARTITION BY st.account, st.gpu_uuid, st.ts, {_workload_of("st")}
                                   ORDER BY st.job) = 1
    """, {"refused": refused})
    late = con.execute("SELECT min(ts), max(ts) FROM cand_rows WHERE ooo").fetchone()
    if late and late[0] is not None:
        con.execute(
            f"""DELETE FROM cand_rows USING samples s
               WHERE cand_rows.ooo AND s.ts BETWEEN $lo AND $hi AND s.account = cand_rows.account
                 AND s.gpu_uuid = cand_rows.gpu_uuid AND s.ts = cand_rows.ts
                 AND {_same_workload("s", "cand_rows")}""",
            {"lo": late[0], "hi": late[1]},
        )


def _first_share_problem(con: duckdb.DuckDBPyConnection) -> tuple[Any, ...] | None:
    """The first job (in group order) whose fractions push a GPU's shares at a time over
    the limit, counting what is stored and what earlier jobs of the group bring:
    (job, gpu_uuid, ts µs, total, stored part), or None."""
    span = con.execute("SELECT min(ts), max(ts) FROM cand_rows WHERE gpu_fraction IS NOT NULL").fetchone()
    if span is None or span[0] is None:
        return None
    return con.execute("""
        WITH new AS (
            SELECT job, account, gpu_uuid, ts, sum(gpu_fraction) AS f
            FROM cand_rows WHERE gpu_fraction IS NOT NULL GROUP BY ALL
        ),
        stored AS (  -- only rows not newer than the tail can have stored company
            SELECT s.account, s.gpu_uuid, s.ts, sum(s.gpu_fraction) AS f
            FROM samples s
            JOIN (SELECT DISTINCT account, gpu_uuid, ts FROM cand_rows
                  WHERE ooo AND gpu_fraction IS NOT NULL) c
              ON s.account = c.account AND s.gpu_uuid = c.gpu_uuid AND s.ts = c.ts
            WHERE s.ts BETWEEN $lo AND $hi AND s.gpu_fraction IS NOT NULL
            GROUP BY ALL
        ),
        running AS (
            SELECT n.job, n.gpu_uuid, n.ts, coalesce(st.f, 0) AS stored_f,
                   coalesce(st.f, 0) + sum(n.f) OVER (PARTITION BY n.account, n.gpu_uuid, n.ts
                                                      ORDER BY n.job) AS total
            FROM new n LEFT JOIN stored st USING (account, gpu_uuid, ts)
        )
        SELECT job, gpu_uuid, epoch_us(ts), total, stored_f FROM running
        WHERE total > $most ORDER BY job, ts LIMIT 1
    """, {"lo": span[0], "hi": span[1], "most": OVER_SHARE_SUM}).fetchone()


def write_fresh(con: duckdb.DuckDBPyConnection, source: str) -> None:
    """Inside an open transaction: insert rows proved new and in order straight from the
    group's staged files (``source``, a SELECT with ``staging``'s columns); their rollup
    upkeep is deferred (``pending``).

    (Copying the rows through the ``staging`` table and into a pending copy cost ~40 %
    more DuckDB CPU per group.)
    """
    con.execute(
        f"""INSERT INTO samples (account, ts, {_SAMPLE_COLUMNS}, received_at)
            SELECT account, ts, {_SAMPLE_COLUMNS}, received_at FROM ({source})""")


def _merge(into: dict[Key, Range], ranges: dict[Key, Range]) -> None:
    """Widen the pending ranges by a committed group's."""
    for key, (low, high, count) in ranges.items():
        seen = into.get(key)
        into[key] = (low, high, count) if seen is None else (min(seen[0], low), max(seen[1], high), seen[2] + count)


_STAGED = ", ".join("st." + f for f in SAMPLE_FIELDS)


def _workload_of(alias: str) -> str:
    """A row's workload as SQL: job, team and model, absent parts as ''."""
    return ", ".join(f"coalesce({alias}.{c}, '')" for c in ("job_id", "team_id", "model_tag"))


def _same_workload(a: str, b: str) -> str:
    return " AND ".join(f"coalesce({a}.{c}, '') = coalesce({b}.{c}, '')"
                        for c in ("job_id", "team_id", "model_tag"))


# How DuckDB words a write the filesystem refused (its IOException, or a failed COMMIT).
_STORAGE_WORDS = ("No space left on device", "Disk quota exceeded", "Input/output error",
                  "Read-only file system", "File too large")
_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG})


def storage_failure(exc: BaseException) -> StorageFullError | None:
    """``exc`` as a StorageFullError when the filesystem refused a write, else None."""
    if isinstance(exc, StorageFullError):
        return exc
    if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
        return StorageFullError(exc.errno, exc.strerror or str(exc))
    if isinstance(exc, duckdb.Error) and (isinstance(exc, duckdb.IOException)
                                          or any(w in str(exc) for w in _STORAGE_WORDS)):
        return StorageFullError(str(exc))
    return None


def _nothing(_con: duckdb.DuckDBPyConnection) -> None:
    """A call job that only waits for the fold that precedes every call."""


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    try:
        con.rollback()
    except duckdb.Error as exc:  # no transaction open: the failure came before BEGIN
        log.debug("rollback: %s", exc)


def _answer(done: Callable[[Any, BaseException | None], None], result: Any,
            exc: BaseException | None) -> None:
    """Tell a waiter; whatever its callback does, the writer thread goes on."""
    try:
        done(result, exc)
    except Exception:
        log.exception("answering a store waiter failed")


def _resolver(future: concurrent.futures.Future[Any]) -> Callable[[Any, BaseException | None], None]:
    def done(result: Any, exc: BaseException | None) -> None:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    return done


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None,
            cleanup: Callable[[], None]) -> None:
    cleanup()
    if future.done():  # the waiter was cancelled; the write still happened (or not)
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)

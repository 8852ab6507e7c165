"""The store's single write path: one thread owns the write connection.

Sample batches submitted concurrently are written in ONE transaction (group
commit): the thread drains its queue, appends every batch into a staging table
with DuckDB's appender, dedups on (account, gpu_uuid, timestamp) within the
group and against stored rows, inserts, maintains the usage rollup, COMMITs,
and only then resolves every waiter. A failure rolls the whole group back and
every waiter gets the exception. Other writes (keys, heartbeats, purge audit)
are jobs on the same thread, so the process has exactly one writer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import duckdb

from server.store import usage_sql
from server.store.timeutil import to_db

log = logging.getLogger("gpufleet.store.writer")

T = TypeVar("T")

# MetricSample fields after `timestamp`, in staging/sample column order.
SAMPLE_FIELDS: tuple[str, ...] = (
    "gpu_index", "gpu_uuid", "power_draw_w", "utilization_gpu_pct", "utilization_memory_pct",
    "temperature_c", "memory_used_mb", "gpu_name", "power_limit_w", "energy_delta_j",
    "fan_speed_pct", "memory_total_mb", "sm_clock_mhz", "memory_clock_mhz", "job_id",
    "team_id", "model_tag", "scheduler_source", "hostname",
)
_SAMPLE_COLUMNS = ", ".join(SAMPLE_FIELDS)
_STAGING_DDL = """CREATE TEMP TABLE IF NOT EXISTS staging (
    job INTEGER, ts TIMESTAMPTZ, gpu_index INTEGER, gpu_uuid VARCHAR,
    power_draw_w DOUBLE, utilization_gpu_pct DOUBLE, utilization_memory_pct DOUBLE,
    temperature_c DOUBLE, memory_used_mb DOUBLE, gpu_name VARCHAR, power_limit_w DOUBLE,
    energy_delta_j DOUBLE, fan_speed_pct DOUBLE, memory_total_mb DOUBLE, sm_clock_mhz DOUBLE,
    memory_clock_mhz DOUBLE, job_id VARCHAR, team_id VARCHAR, model_tag VARCHAR,
    scheduler_source VARCHAR, hostname VARCHAR
)"""
_JOBS_DDL = "CREATE TEMP TABLE IF NOT EXISTS jobs (job INTEGER, account VARCHAR, received_at TIMESTAMP)"
MAX_GROUP_SAMPLES = 200_000  # one transaction stays bounded in memory


@dataclass(frozen=True)
class WriteResult:
    inserted: int
    duplicates: int


class StoreClosedError(RuntimeError):
    """The store is closed; nothing more can be written."""


@dataclass
class _SampleJob:
    account: str
    samples: Sequence[dict[str, Any]]
    received_at: datetime
    done: Callable[[WriteResult | None, BaseException | None], None]


@dataclass
class _CallJob:
    fn: Callable[[duckdb.DuckDBPyConnection], Any]
    done: Callable[[Any, BaseException | None], None]
    transaction: bool = True


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
        self._con.execute(_STAGING_DDL)
        self._con.execute(_JOBS_DDL)
        self._thread = threading.Thread(target=self._run, name="gpufleet-store-writer", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- API

    async def submit(self, account: str, samples: Sequence[dict[str, Any]], received_at: datetime) -> WriteResult:
        """Store validated samples; resolves after COMMIT with inserted + duplicates == len(samples)."""
        if not samples:
            return WriteResult(0, 0)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[WriteResult] = loop.create_future()

        def done(result: WriteResult | None, exc: BaseException | None) -> None:
            loop.call_soon_threadsafe(_settle, future, result, exc)

        self._put(_SampleJob(account, samples, received_at, done))
        return await future

    def submit_sync(self, account: str, samples: Sequence[dict[str, Any]], received_at: datetime) -> WriteResult:
        """The blocking form of ``submit`` for threads without an event loop (loaders, CLI)."""
        if not samples:
            return WriteResult(0, 0)
        future: concurrent.futures.Future[WriteResult] = concurrent.futures.Future()
        self._put(_SampleJob(account, samples, received_at, _resolver(future)))
        return future.result()

    def call(self, fn: Callable[[duckdb.DuckDBPyConnection], T], *, transaction: bool = True) -> T:
        """Run ``fn(write_connection)`` on the writer thread (in a transaction) and return its result."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._put(_CallJob(fn, _resolver(future), transaction))
        return future.result()

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
        """Write everything queued, then stop the thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            stop = _Stop()
            self._queue.put(stop)
        stop.done.wait()
        self._thread.join()

    def _put(self, job: _SampleJob | _CallJob) -> None:
        with self._lock:
            if self._closed:
                raise StoreClosedError("the store is closed")
            self._queue.put(job)

    # -------------------------------------------------------------- thread

    def _run(self) -> None:
        pending: _SampleJob | _CallJob | _Stop | None = None
        while True:
            job = pending or self._queue.get()
            pending = None
            if isinstance(job, _Stop):
                job.done.set()
                return
            if isinstance(job, _CallJob):
                self._run_call(job)
                continue
            group = [job]
            size = len(job.samples)
            while size < MAX_GROUP_SAMPLES:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if not isinstance(nxt, _SampleJob):
                    pending = nxt  # keep order: run it right after this group
                    break
                group.append(nxt)
                size += len(nxt.samples)
            self._run_group(group)

    def _run_call(self, job: _CallJob) -> None:
        con = self._con
        try:
            if job.transaction:
                con.begin()
            result = job.fn(con)
            if job.transaction:
                con.commit()
        except BaseException as exc:
            if job.transaction:
                _rollback(con)
            job.done(None, exc)
            return
        job.done(result, None)

    def _run_group(self, group: list[_SampleJob]) -> None:
        con = self._con
        try:
            con.begin()
            counts = write_samples(con, group, self._rollup)
            con.commit()
        except BaseException as exc:
            _rollback(con)
            log.warning("sample write of %d batches rolled back: %s", len(group), exc)
            for job in group:
                job.done(None, exc)
            return
        for index, job in enumerate(group):
            inserted = counts.get(index, 0)
            job.done(WriteResult(inserted, len(job.samples) - inserted), None)


def write_samples(con: duckdb.DuckDBPyConnection, group: Sequence[_SampleJob], rollup: RollupParams) -> dict[int, int]:
    """Inside an open transaction: stage, dedup, insert, roll up; returns inserted rows per job."""
    fields = SAMPLE_FIELDS
    appender = con.appender("staging")
    try:
        for index, job in enumerate(group):
            # account and receive time are per batch: they join in from `jobs`, not per row
            appender.append_rows([(index, s["timestamp"], *map(s.get, fields)) for s in job.samples])
        appender.flush()
    finally:
        appender.clear()
    con.execute("DELETE FROM jobs")
    con.executemany("INSERT INTO jobs VALUES (?, ?, ?)",
                    [(i, job.account, to_db(job.received_at)) for i, job in enumerate(group)])
    n, distinct, late = con.execute("""
        SELECT count(*), count(DISTINCT (j.account, st.gpu_uuid, st.ts)),
               count(*) FILTER (WHERE st.ts::TIMESTAMP <= g.ts)
        FROM staging st JOIN jobs j USING (job)
        LEFT JOIN gpu_last g ON g.account = j.account AND g.gpu_uuid = st.gpu_uuid
    """).fetchone()
    if n == distinct and not late:
        # the live path: every row is new and newer than its GPU's tail; no copy needed
        con.execute(f"""
            CREATE OR REPLACE TEMP VIEW cand AS
            SELECT st.job, j.account, st.ts::TIMESTAMP AS ts, {_STAGED}, j.received_at, false AS ooo
            FROM staging st JOIN jobs j USING (job)
        """)
    else:
        _stage_deduplicated(con)
    params = {"cap_us": rollup.cap_us, "idle_pct": rollup.idle_pct}
    con.execute(
        f"""INSERT INTO samples (account, ts, {_SAMPLE_COLUMNS}, received_at)
            SELECT account, ts, {_SAMPLE_COLUMNS}, received_at FROM cand"""
    )
    con.execute(usage_sql.APPEND_IN_ORDER, params)
    if late:
        con.execute("""
            CREATE OR REPLACE TEMP TABLE redo AS
            SELECT account, gpu_uuid, epoch_us(date_trunc('day', min(ts))) - 86400000000 AS from_us
            FROM cand WHERE ooo GROUP BY ALL
        """)
        if con.execute("SELECT count(*) FROM redo").fetchone()[0]:
            con.execute(usage_sql.DELETE_REDO_DAYS)
            con.execute(usage_sql.RECOMPUTE_REDO, params)
    con.execute(_UPSERT_GPU_LAST)
    rows = con.execute("SELECT job, count(*) FROM cand GROUP BY job").fetchall()
    con.execute("DELETE FROM staging")
    return {int(job): int(n) for job, n in rows}


def _stage_deduplicated(con: duckdb.DuckDBPyConnection) -> None:
    """The careful path: first occurrence of each key in the group, minus rows already stored."""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE cand_rows AS
        SELECT st.job, j.account, st.ts::TIMESTAMP AS ts, {_STAGED}, j.received_at,
               coalesce(st.ts::TIMESTAMP <= g.ts, false) AS ooo
        FROM staging st JOIN jobs j USING (job)
        LEFT JOIN gpu_last g ON g.account = j.account AND g.gpu_uuid = st.gpu_uuid
        QUALIFY row_number() OVER (PARTITION BY j.account, st.gpu_uuid, st.ts ORDER BY st.job) = 1
    """)
    late = con.execute("SELECT min(ts), max(ts) FROM cand_rows WHERE ooo").fetchone()
    if late and late[0] is not None:
        # only rows not newer than their GPU's tail can already be stored
        con.execute(
            """DELETE FROM cand_rows USING samples s
               WHERE cand_rows.ooo AND s.ts BETWEEN $lo AND $hi AND s.account = cand_rows.account
                 AND s.gpu_uuid = cand_rows.gpu_uuid AND s.ts = cand_rows.ts""",
            {"lo": late[0], "hi": late[1]},
        )
    con.execute("CREATE OR REPLACE TEMP VIEW cand AS SELECT * FROM cand_rows")


_STAGED = ", ".join("st." + f for f in SAMPLE_FIELDS)
_NEWER = "excluded.ts > gpu_last.ts"
_UPSERT_GPU_LAST = f"""
    INSERT INTO gpu_last BY NAME
    SELECT account, gpu_uuid, ts, gpu_name, team_id, model_tag, power_draw_w, energy_delta_j,
           utilization_gpu_pct, received_at, hostname
    FROM cand QUALIFY row_number() OVER (PARTITION BY account, gpu_uuid ORDER BY ts DESC) = 1
    ON CONFLICT DO UPDATE SET
        {", ".join(f"{c} = CASE WHEN {_NEWER} THEN excluded.{c} ELSE gpu_last.{c} END"
                   for c in ("ts", "gpu_name", "team_id", "model_tag", "power_draw_w",
                             "energy_delta_j", "utilization_gpu_pct"))},
        received_at = greatest(excluded.received_at, gpu_last.received_at),
        hostname = coalesce(excluded.hostname, gpu_last.hostname)
"""


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    try:
        con.rollback()
    except duckdb.Error as exc:  # no transaction open: the failure came before BEGIN
        log.debug("rollback: %s", exc)


def _resolver(future: concurrent.futures.Future[Any]) -> Callable[[Any, BaseException | None], None]:
    def done(result: Any, exc: BaseException | None) -> None:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    return done


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():  # the waiter was cancelled; the write still happened (or not)
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)

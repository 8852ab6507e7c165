"""Samples stored but not yet folded into the usage rollup and the per-GPU tail.

Keeping ``usage_daily`` and ``gpu_last`` costs a fixed ~20 ms of SQL per write
whatever its size, so a group of live (in-order, new) samples is only inserted,
and the rollup is folded in later, in one pass over many groups: when the writer
is idle, when enough rows or time have accumulated, and before anything reads the
rollup or the tail (reports, hosts, other writes).

What is pending needs no copy: every sample newer than its GPU's tail in
``gpu_last`` is pending (the writer defers only rows it proved newer, and every
other write folds first). The writer keeps each GPU's pending time range in memory
(``Range``) and a fold reads those rows back from ``samples``. For a crash, one
durable row is enough: ``pending_since`` holds a time at or before every pending
sample, written in the group's own transaction only when a group goes below it
(once per fold cycle for live agents); a store opened after a crash finds the
pending rows from there (newer than their GPU's tail) and folds them first. Rows
that versions before schema 6 copied into ``rollup_pending`` are also newer than
their tail, so the same recovery covers them.
"""

from __future__ import annotations

from collections.abc import Mapping, Set

import duckdb

from gpufleet.server.store import usage_sql
from gpufleet.server.store.staging import Key, Range

PENDING_COLUMNS = ("account, gpu_uuid, ts, job_id, gpu_name, team_id, model_tag, power_draw_w, "
                   "energy_delta_j, utilization_gpu_pct, received_at, hostname, gpu_fraction")
# how far below a group's oldest pending sample the durable mark goes, so the next
# groups (other GPUs a little behind) rarely need to move it
MARK_MARGIN_US = 600 * 1_000_000

_FROM_SAMPLES = ", ".join("s." + c.strip() for c in PENDING_COLUMNS.split(","))
# The writer's ranges: a GPU's rows between its lowest and highest pending timestamp.
# The lowest of all is inlined as a constant so DuckDB skips older row groups.
_ROWS_IN_RANGES = f"""
    CREATE OR REPLACE TEMP TABLE pending_rows AS
    SELECT {_FROM_SAMPLES} FROM samples s
    JOIN (SELECT unnest($account) AS account, unnest($uuid) AS gpu_uuid,
                 make_timestamp(unnest($lo)) AS lo, make_timestamp(unnest($hi)) AS hi) r
      ON s.account = r.account AND s.gpu_uuid = r.gpu_uuid AND s.ts BETWEEN r.lo AND r.hi
    WHERE s.ts >= {{floor}}
"""
# After a crash: every sample since the mark that is newer than its GPU's tail.
_ROWS_NEWER_THAN_TAIL = f"""
    CREATE OR REPLACE TEMP TABLE pending_rows AS
    SELECT {_FROM_SAMPLES} FROM samples s
    LEFT JOIN gpu_last g ON g.account = s.account AND g.gpu_uuid = s.gpu_uuid
    WHERE s.ts >= {{floor}} AND (g.ts IS NULL OR s.ts > g.ts)
"""

def mark(con: duckdb.DuckDBPyConnection, since_us: int) -> None:
    """Inside a group's transaction: every pending sample is at or after ``since_us``."""
    con.execute("DELETE FROM pending_since")
    con.execute(f"INSERT INTO pending_since VALUES (make_timestamp({int(since_us)}))")


def fold(con: duckdb.DuckDBPyConnection, ranges: Mapping[Key, Range], cap_us: int, idle_pct: float,
         shared: Set[Key] = frozenset()) -> None:
    """Inside an open transaction: fold the writer's pending ranges into the rollup and the tail.

    ``shared``: the pending GPUs whose rows share a time or carry a gpu_fraction; GPUs whose
    stored tail is shared are looked up here. Only those take the grouping SQL: the others
    (almost always all of them) the plain one, which costs about half as much.
    """
    if ranges:
        keys = list(ranges)
        values = list(ranges.values())
        con.execute(_ROWS_IN_RANGES.format(floor=_literal_us(min(v[0] for v in values))), {
            "account": [k[0] for k in keys], "uuid": [k[1] for k in keys],
            "lo": [v[0] for v in values], "hi": [v[1] for v in values]})
        tails = con.execute(usage_sql.SHARED_TAILS).fetchall()
        _fold_rows(con, cap_us, idle_pct, (set(shared) | set(tails)) & set(keys))
    con.execute("DELETE FROM pending_since")


def fold_on_open(con: duckdb.DuckDBPyConnection, default_cap_us: int, default_idle_pct: float) -> None:
    """At open (no writer yet): fold what a crash left pending, with the rollup's stored parameters."""
    if _recovery_floor(con) is None:
        return
    row = con.execute("SELECT interval_us, idle_utilization_pct FROM rollup_meta").fetchone()
    cap_us, idle_pct = (2 * int(row[0]), float(row[1])) if row else (default_cap_us, default_idle_pct)
    con.begin()
    try:
        catch_up(con, cap_us, idle_pct)
        con.commit()
    except BaseException:
        con.rollback()
        raise


def catch_up(con: duckdb.DuckDBPyConnection, cap_us: int, idle_pct: float) -> None:
    """Inside an open transaction: fold every pending sample found in the store itself
    (since the durable mark, newer than its GPU's tail), whatever the writer remembers.

    What a store runs at open after a crash, and the writer when a fold failed.
    """
    since = _recovery_floor(con)
    if since is None:
        return
    con.execute(_ROWS_NEWER_THAN_TAIL.format(floor=_literal_us(since)))
    _fold_rows(con, cap_us, idle_pct)
    con.execute("DELETE FROM pending_since")
    con.execute("DELETE FROM rollup_pending")


def _recovery_floor(con: duckdb.DuckDBPyConnection) -> int | None:
    """µs since the epoch at or before every pending sample; None when nothing is pending."""
    row = con.execute("""SELECT epoch_us(least((SELECT min(since) FROM pending_since),
                                               (SELECT min(ts) FROM rollup_pending)))""").fetchone()
    return int(row[0]) if row and row[0] is not None else None


def _fold_rows(con: duckdb.DuckDBPyConnection, cap_us: int, idle_pct: float,
               shared: Set[Key] | None = None) -> None:
    """``pending_rows`` into the rollup and the tails; GPUs in ``shared`` (None: any GPU may
    be) take the grouping SQL, the others the plain one (one row per GPU and time, no
    fractions: the same rule, without grouping)."""
    params = {"cap_us": cap_us, "idle_pct": idle_pct}
    if shared is None:
        con.execute("CREATE OR REPLACE TEMP VIEW cand AS SELECT *, false AS ooo FROM pending_rows")
        con.execute(usage_sql.APPEND_IN_ORDER, params)
        usage_sql.update_tails(con)
    elif not shared:
        con.execute("CREATE OR REPLACE TEMP VIEW cand AS SELECT *, false AS ooo FROM pending_rows")
        con.execute(usage_sql.APPEND_IN_ORDER_PLAIN, params)
        usage_sql.update_tails(con, plain=True)
    else:
        con.execute("CREATE OR REPLACE TEMP TABLE shared_gpus (account VARCHAR, gpu_uuid VARCHAR)")
        con.executemany("INSERT INTO shared_gpus VALUES (?, ?)", sorted(shared))
        for negate, sql, plain in (("NOT", usage_sql.APPEND_IN_ORDER_PLAIN, True),
                                   ("", usage_sql.APPEND_IN_ORDER, False)):
            con.execute(f"""CREATE OR REPLACE TEMP VIEW cand AS SELECT *, false AS ooo FROM pending_rows
                            WHERE (account, gpu_uuid) {negate} IN (SELECT account, gpu_uuid FROM shared_gpus)""")
            con.execute(sql, params)
            usage_sql.update_tails(con, plain=plain)
        con.execute("DROP TABLE shared_gpus")
    con.execute("DROP TABLE pending_rows")


def _literal_us(value_us: int) -> str:
    # an integer, never a Python datetime: DuckDB returns times before year 1 (a mark
    # below a year-1 sample) as text, and a constant expression still prunes row groups
    return f"make_timestamp({int(value_us)})"

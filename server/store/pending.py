"""Samples stored but not yet folded into the usage rollup and the per-GPU tail.

Keeping ``usage_daily`` and ``gpu_last`` costs a fixed ~20 ms of SQL per write
whatever its size, so live (in-order, new) samples are recorded in
``rollup_pending`` in the same transaction as ``samples`` and folded in later, in
one pass over many groups: when the writer is idle, when enough rows or time
have accumulated, and before anything reads the rollup or the tail (reports,
hosts, other writes). All pending rows are newer than their GPU's tail in
``gpu_last`` (the writer only defers rows it proved so), which is what
``APPEND_IN_ORDER`` needs. Pending rows are durable: a store opened after a
crash folds them in first.
"""

from __future__ import annotations

import duckdb

from server.store import usage_sql

PENDING_COLUMNS = ("account, gpu_uuid, ts, gpu_name, team_id, model_tag, power_draw_w, "
                   "energy_delta_j, utilization_gpu_pct, received_at, hostname")

# Rows of one group, newer than their GPU's tail; `staging` holds them.
RECORD_FROM_STAGING = f"INSERT INTO rollup_pending SELECT {PENDING_COLUMNS} FROM staging"

_NEWER = "excluded.ts > gpu_last.ts"
# Each GPU's newest pending sample becomes its tail (the latest non-empty hostname
# and the latest receive time win, as when groups are folded one by one).
_FOLD_GPU_LAST = f"""
    INSERT INTO gpu_last BY NAME
    SELECT account, gpu_uuid, max(ts) AS ts,
           arg_max_null(gpu_name, ts) AS gpu_name, arg_max_null(team_id, ts) AS team_id,
           arg_max_null(model_tag, ts) AS model_tag, arg_max_null(power_draw_w, ts) AS power_draw_w,
           arg_max_null(energy_delta_j, ts) AS energy_delta_j,
           arg_max_null(utilization_gpu_pct, ts) AS utilization_gpu_pct,
           max(received_at) AS received_at, arg_max(hostname, ts) AS hostname
    FROM rollup_pending GROUP BY account, gpu_uuid
    ON CONFLICT DO UPDATE SET
        {", ".join(f"{c} = CASE WHEN {_NEWER} THEN excluded.{c} ELSE gpu_last.{c} END"
                   for c in ("ts", "gpu_name", "team_id", "model_tag", "power_draw_w",
                             "energy_delta_j", "utilization_gpu_pct"))},
        received_at = greatest(excluded.received_at, gpu_last.received_at),
        hostname = coalesce(excluded.hostname, gpu_last.hostname)
"""


def pending_count(con: duckdb.DuckDBPyConnection) -> int:
    row = con.execute("SELECT count(*) FROM rollup_pending").fetchone()
    return int(row[0]) if row else 0


def fold_pending(con: duckdb.DuckDBPyConnection, cap_us: int, idle_pct: float) -> None:
    """Inside an open transaction: add pending rows to the rollup and the tail, then forget them."""
    con.execute("CREATE OR REPLACE TEMP VIEW cand AS SELECT *, false AS ooo FROM rollup_pending")
    con.execute(usage_sql.APPEND_IN_ORDER, {"cap_us": cap_us, "idle_pct": idle_pct})
    con.execute(_FOLD_GPU_LAST)
    con.execute("DELETE FROM rollup_pending")


def fold_on_open(con: duckdb.DuckDBPyConnection, default_cap_us: int, default_idle_pct: float) -> None:
    """At open (no writer yet): fold rows left pending by a crash, with the rollup's stored parameters."""
    if not pending_count(con):
        return
    row = con.execute("SELECT interval_us, idle_utilization_pct FROM rollup_meta").fetchone()
    cap_us, idle_pct = (2 * int(row[0]), float(row[1])) if row else (default_cap_us, default_idle_pct)
    con.begin()
    try:
        fold_pending(con, cap_us, idle_pct)
        con.commit()
    except BaseException:
        con.rollback()
        raise

"""SQL of covered GPU time: the rule chargeback bills by, in one place.

Every sample covers the time until the same GPU's next sample, at most
``cap_us`` (twice the expected interval); a GPU's last sample covers one
interval (``interval_us``). That interval's energy is the next sample's
``energy_delta_j`` (energy used since the previous sample) when the next sample
is within the cap, else ``power_draw_w`` x covered time; either way it goes to
the same sample's team, model and GPU as the covered time. Covered time is cut at UTC midnights into
``usage_daily`` so a report over whole days sums rollup rows, and the raw
query below is the same rule over samples (the reference and the fallback).
All times are integer microseconds since the epoch.

Shared GPUs: the rows of one GPU at one time (one per workload) are ONE reading
of the GPU (``readings``: its power, energy delta and utilization are the
largest the rows report) whose interval runs to the GPU's next distinct time,
split across the rows by share (``shares``): a row's ``gpu_fraction``, scaled
down when the fractions add up to more than 1 (validation allows a rounding
tolerance); rows without one share what the fractions leave, equally; what
nobody claims (every row has a fraction and they add up to less than 1) goes to
no team and no model. So the shares of a GPU at a time add up to exactly 1 and a
GPU's totals are what it alone would be billed. The rows are windowed once per
GPU (``_windowed_readings_sql``); only rows that share a time are grouped, so
the common single-row case costs about what it did before shared GPUs.
"""

from __future__ import annotations

import duckdb

DAY_US = 86_400_000_000
# The rule usage_daily was computed by, kept as that table's comment; a store whose
# rollup was built by an older rule is rebuilt on open. 2: an interval's energy is the
# next sample's energy_delta_j (1 used the sample's own delta, which covers the time before it).
# 3: rows of one GPU at one time are one reading split across workloads (gpu_fraction).
ROLLUP_METHOD = "usage rule 3"

# A row's columns the rule reads (besides account, gpu_uuid and its time).
_ATTRS = ("gpu_name, team_id, model_tag, gpu_fraction, power_draw_w, energy_delta_j, "
          "utilization_gpu_pct")


def _shares_sql(intervals: str, source: str) -> str:
    """``shares``: every row of ``intervals`` (readings with their covered time) once per
    workload of ``source`` sampled at that GPU and time, with its ``share``; plus the
    unclaimed remainder, with no team and no model."""
    several = f"""
        UNION ALL BY NAME
        SELECT i.* EXCLUDE (gpu_name, team_id, model_tag, gpu_fraction),
               r.gpu_name, r.team_id, r.model_tag,
               CASE WHEN r.gpu_fraction IS NOT NULL THEN r.gpu_fraction / greatest(1, i.fixed)
                    ELSE greatest(0, 1 - i.fixed) / i.free END AS share
        FROM {intervals} i JOIN {source} r
          ON r.account = i.account AND r.gpu_uuid = i.gpu_uuid AND r.t = i.t
        WHERE i.n > 1"""
    return f"""
    shares AS (
        SELECT * EXCLUDE (gpu_fraction), coalesce(gpu_fraction / greatest(1, fixed), 1) AS share
        FROM {intervals} WHERE n = 1{several}
        UNION ALL BY NAME
        SELECT * EXCLUDE (team_id, model_tag, gpu_fraction),
               NULL::VARCHAR AS team_id, NULL::VARCHAR AS model_tag, 1 - fixed AS share
        FROM {intervals} WHERE free = 0 AND fixed < 1
    )"""


def _parts_sql(source: str, *, floor_us: str | None = None) -> str:
    """Split each covered interval of ``source`` (a, full_us, share, attributes) at midnight.

    An interval is at most ``cap_us`` long, which must not exceed a day, so it
    crosses at most one midnight. Parts starting before ``floor_us`` (when given) are
    dropped; without it every part is kept, times before 1970 included.
    ``d0`` is the UTC midnight at or before ``a``: SQL's ``%`` truncates toward zero,
    so the floored form keeps times before 1970 (negative ``a``) on their own day.
    """
    first = "true" if floor_us is None else f"d0 >= {floor_us}"
    second = "true" if floor_us is None else f"d0 + {DAY_US} >= {floor_us}"
    return f"""
    iv AS (
        SELECT *, a + full_us AS b, a - (((a % {DAY_US}) + {DAY_US}) % {DAY_US}) AS d0
        FROM {source}
    ),
    parts AS (
        SELECT account, gpu_uuid, team_id, model_tag, gpu_name, power_draw_w,
               interval_energy_j, utilization_gpu_pct, full_us, share,
               d0 AS day_us, least(b, d0 + {DAY_US}) - a AS part_us
        FROM iv WHERE {first}
        UNION ALL
        SELECT account, gpu_uuid, team_id, model_tag, gpu_name, power_draw_w,
               interval_energy_j, utilization_gpu_pct, full_us, share,
               d0 + {DAY_US} AS day_us, b - (d0 + {DAY_US}) AS part_us
        FROM iv WHERE b > d0 + {DAY_US} AND {second}
    ),
    daily AS (
        SELECT account, make_timestamp(day_us)::DATE AS day, gpu_uuid,
               coalesce(team_id, '') AS team_id, coalesce(model_tag, '') AS model_tag,
               coalesce(gpu_name, '') AS gpu_name,
               sum(part_us * share) AS covered_us,
               sum(coalesce(interval_energy_j * part_us / full_us, power_draw_w * part_us / 1e6)
                   * share) AS energy_j,
               sum(CASE WHEN utilization_gpu_pct < $idle_pct THEN part_us * share ELSE 0 END)
                   AS idle_us,
               sum(CASE WHEN share < 1 THEN part_us * share ELSE 0 END) AS shared_us
        FROM parts WHERE part_us > 0 AND share > 0
        GROUP BY ALL
    )"""


UPSERT_DAILY = """
    INSERT INTO usage_daily BY NAME SELECT * FROM daily
    ON CONFLICT DO UPDATE SET
        covered_us = usage_daily.covered_us + excluded.covered_us,
        energy_j = usage_daily.energy_j + excluded.energy_j,
        idle_us = usage_daily.idle_us + excluded.idle_us,
        shared_us = usage_daily.shared_us + excluded.shared_us
"""

# The energy of the interval [t, next): the NEXT reading's energy_delta_j ("energy consumed
# since last sample"), when that reading follows within the cap; after a longer gap its
# delta spans time that is not billed, so the interval falls back to power x time.
_INTERVAL_ENERGY = "CASE WHEN nxt - t <= $cap_us THEN nxt_energy_j END"


def _windowed_readings_sql(extra: str = "") -> str:
    """``win``, ``several``, ``readings``: the rows of ``seq`` in one windowed pass per GPU,
    each reading with its successor's time (``nxt``) and energy delta (``nxt_energy_j``).

    The window orders a GPU's rows by time and, among rows of one time, by energy delta
    (largest first): so a reading's LAST row sees, one row ahead, the next reading's
    time and its largest delta. A row alone at its time (almost every row) is its own
    reading; the rows of a shared GPU's time (``several``) are grouped into one: the only
    aggregation, over those rows alone. ``extra``: columns constant per GPU, carried.
    """
    carried = f", {extra}" if extra else ""
    return f"""
    win AS (
        SELECT *, lead(t) OVER w AS nxt, lead(energy_delta_j) OVER w AS nxt_energy_j,
               lag(t) OVER w AS prv
        FROM seq
        WINDOW w AS (PARTITION BY account, gpu_uuid ORDER BY t, energy_delta_j DESC NULLS LAST)
    ),
    several AS (SELECT * FROM win WHERE nxt = t OR prv = t),
    readings AS (
        SELECT account, gpu_uuid, t{carried}, 1 AS n, power_draw_w, utilization_gpu_pct,
               coalesce(gpu_fraction, 0) AS fixed, CASE WHEN gpu_fraction IS NULL THEN 1 ELSE 0 END AS free,
               gpu_name, team_id, model_tag, gpu_fraction, nxt, nxt_energy_j
        FROM win WHERE nxt IS DISTINCT FROM t AND prv IS DISTINCT FROM t
        UNION ALL BY NAME
        SELECT account, gpu_uuid, t{carried}, count(*) AS n, max(power_draw_w) AS power_draw_w,
               max(utilization_gpu_pct) AS utilization_gpu_pct,
               coalesce(sum(gpu_fraction), 0) AS fixed, count(*) - count(gpu_fraction) AS free,
               min(gpu_name) AS gpu_name, NULL::VARCHAR AS team_id, NULL::VARCHAR AS model_tag,
               NULL::DOUBLE AS gpu_fraction,
               max(CASE WHEN nxt > t THEN nxt END) AS nxt,  -- only the time's last row looks ahead
               max(CASE WHEN nxt > t THEN nxt_energy_j END) AS nxt_energy_j
        FROM several GROUP BY ALL
    )"""


def _closed_sql(extra: str = "") -> str:
    """Every reading of ``seq`` with a successor: its covered time and energy, in ``shares``."""
    return f"""{_windowed_readings_sql(extra).strip()},
    closed AS (
        SELECT *, t AS a, least(nxt - t, $cap_us) AS full_us,
               {_INTERVAL_ENERGY} AS interval_energy_j
        FROM readings WHERE nxt IS NOT NULL
    ),
    {_shares_sql("closed", "several").strip()}"""


# A GPU's tail as rows (gpu_tail): one per workload sampled at its newest time.
_TAIL_ROWS = f"""
    SELECT account, gpu_uuid, epoch_us(ts) AS t, {_ATTRS} FROM gpu_tail WHERE NOT unclaimed"""

# The same when ``seq`` holds one row per GPU and time and no fraction (GPUs nobody
# shares: what a fold almost always sees): every row is a reading and the whole GPU.
_CLOSED_PLAIN = f"""
    win AS (
        SELECT *, lead(t) OVER w AS nxt, lead(energy_delta_j) OVER w AS nxt_energy_j FROM seq
        WINDOW w AS (PARTITION BY account, gpu_uuid ORDER BY t)
    ),
    shares AS (
        SELECT *, t AS a, least(nxt - t, $cap_us) AS full_us,
               {_INTERVAL_ENERGY} AS interval_energy_j, 1.0 AS share
        FROM win WHERE nxt IS NOT NULL
    )"""


def _append_in_order(closed: str) -> str:
    return f"""
WITH seq AS (
    {_TAIL_ROWS.strip()}
      AND (account, gpu_uuid) IN (SELECT account, gpu_uuid FROM cand WHERE NOT ooo)
    UNION ALL
    SELECT account, gpu_uuid, epoch_us(ts) AS t, {_ATTRS} FROM cand WHERE NOT ooo
),
{closed.strip()},
{_parts_sql("shares").strip()}
{UPSERT_DAILY}
"""


# In-order arrivals: the GPU's previous tail plus the new rows, windowed; every
# reading with a successor gets its final covered time, added to the daily rollup.
APPEND_IN_ORDER = _append_in_order(_closed_sql())
# The same for GPUs whose rows and tail are plain (see _CLOSED_PLAIN): half the SQL time.
APPEND_IN_ORDER_PLAIN = _append_in_order(_CLOSED_PLAIN)

# A GPU's tail after ``cand``: gpu_last, one row per GPU (its newest time, the reading
# with the largest power, delta and utilization of that time, the latest receive time and
# hostname), and gpu_tail, every workload sampled at that time with its share. Rows newer
# than the tail replace it; rows at the tail's own time (a workload's row that came
# later) join it. ``tail_rows`` holds the new tails' rows (each with its GPU's latest
# receive time and hostname among the new rows); the statements below write them.
_TAIL_COLUMNS = ("account, gpu_uuid, ts, job_id, team_id, model_tag, gpu_name, gpu_fraction, "
                 "power_draw_w, energy_delta_j, utilization_gpu_pct")


def _columns_of(alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in _TAIL_COLUMNS.split(","))


# Every row at each GPU's newest time, stored or new.
_TAIL_ROWS_FROM_CAND = (
    """CREATE OR REPLACE TEMP TABLE newest AS
       SELECT account, gpu_uuid, max(ts) AS ts, max(received_at) AS received_at,
              arg_max(hostname, ts) AS hostname
       FROM cand GROUP BY account, gpu_uuid""",
    f"""CREATE OR REPLACE TEMP TABLE tail_rows AS
        SELECT r.*, n.received_at, n.hostname FROM (
            SELECT {_columns_of("t")}
            FROM gpu_tail t JOIN newest n ON t.account = n.account AND t.gpu_uuid = n.gpu_uuid
            WHERE NOT t.unclaimed AND t.ts >= n.ts
            UNION ALL
            SELECT {_columns_of("c")}
            FROM cand c JOIN newest n ON c.account = n.account AND c.gpu_uuid = n.gpu_uuid AND c.ts = n.ts
        ) r JOIN newest n ON r.account = n.account AND r.gpu_uuid = n.gpu_uuid
        QUALIFY r.ts = max(r.ts) OVER (PARTITION BY r.account, r.gpu_uuid)""",
    "DROP TABLE newest",
)
# The same when every GPU in ``cand`` has one row per time, no fraction, and is newer than
# its tail (the fold's plain GPUs): each GPU's newest row.
_TAIL_ROWS_PLAIN = (
    f"""CREATE OR REPLACE TEMP TABLE tail_rows AS
        SELECT account, gpu_uuid, max(ts) AS ts,
               {", ".join(f"arg_max_null({c}, ts) AS {c}" for c in
                          ("job_id", "team_id", "model_tag", "gpu_name", "gpu_fraction",
                           "power_draw_w", "energy_delta_j", "utilization_gpu_pct"))},
               max(received_at) AS received_at, arg_max(hostname, ts) AS hostname
        FROM cand GROUP BY account, gpu_uuid""",
)

_WRITE_TAILS = (
    """INSERT INTO gpu_last BY NAME
       SELECT account, gpu_uuid, ts, min(gpu_name) AS gpu_name, min(team_id) AS team_id,
              min(model_tag) AS model_tag, max(power_draw_w) AS power_draw_w,
              max(energy_delta_j) AS energy_delta_j, max(utilization_gpu_pct) AS utilization_gpu_pct,
              max(received_at) AS received_at, max(hostname) AS hostname
       FROM tail_rows GROUP BY account, gpu_uuid, ts
       ON CONFLICT DO UPDATE SET
           ts = excluded.ts, gpu_name = excluded.gpu_name, team_id = excluded.team_id,
           model_tag = excluded.model_tag, power_draw_w = excluded.power_draw_w,
           energy_delta_j = excluded.energy_delta_j, utilization_gpu_pct = excluded.utilization_gpu_pct,
           received_at = greatest(excluded.received_at, gpu_last.received_at),
           hostname = coalesce(excluded.hostname, gpu_last.hostname)""",
    """DELETE FROM gpu_tail t USING (SELECT DISTINCT account, gpu_uuid FROM tail_rows) r
       WHERE t.account = r.account AND t.gpu_uuid = r.gpu_uuid""",
    # one reading (the largest figures) in every row, each row's share, what nobody claimed
    """INSERT INTO gpu_tail BY NAME
       WITH g AS (
           SELECT account, gpu_uuid, ts, job_id, team_id, model_tag, gpu_name, gpu_fraction,
                  max(power_draw_w) OVER w AS power_draw_w,
                  max(energy_delta_j) OVER w AS energy_delta_j,
                  max(utilization_gpu_pct) OVER w AS utilization_gpu_pct,
                  coalesce(sum(gpu_fraction) OVER w, 0) AS fixed,
                  count(*) OVER w - count(gpu_fraction) OVER w AS free,
                  min(gpu_name) OVER w AS first_name, row_number() OVER w AS nth
           FROM tail_rows WINDOW w AS (PARTITION BY account, gpu_uuid)
       )
       SELECT * EXCLUDE (fixed, free, first_name, nth), false AS unclaimed,
              CASE WHEN gpu_fraction IS NOT NULL THEN gpu_fraction / greatest(1, fixed)
                   ELSE greatest(0, 1 - fixed) / free END AS share
       FROM g
       UNION ALL BY NAME
       SELECT account, gpu_uuid, ts, first_name AS gpu_name, power_draw_w, energy_delta_j,
              utilization_gpu_pct, 1 - fixed AS share, true AS unclaimed
       FROM g WHERE nth = 1 AND free = 0 AND fixed < 1""",
    "DROP TABLE tail_rows",
)
# A single new row per GPU (the plain path): it is the whole GPU.
_WRITE_PLAIN_TAILS = (*_WRITE_TAILS[:2],
                      f"""INSERT INTO gpu_tail BY NAME
                          SELECT {_TAIL_COLUMNS}, 1.0 AS share, false AS unclaimed FROM tail_rows""",
                      "DROP TABLE tail_rows")

# Bulk loads: the tail rows of every GPU in ``redo`` from its samples.
_TAIL_ROWS_FROM_SAMPLES = (
    f"""CREATE OR REPLACE TEMP TABLE tail_rows AS
        SELECT {_columns_of("s")},
               max(s.received_at) OVER (PARTITION BY s.account, s.gpu_uuid) AS received_at,
               max(s.hostname) OVER (PARTITION BY s.account, s.gpu_uuid) AS hostname
        FROM samples s
        JOIN (SELECT s.account, s.gpu_uuid, max(s.ts) AS ts
              FROM samples s JOIN redo r ON s.account = r.account AND s.gpu_uuid = r.gpu_uuid
              GROUP BY ALL) m
          ON s.account = m.account AND s.gpu_uuid = m.gpu_uuid AND s.ts = m.ts""",
)

# GPUs whose tail is more than one workload's whole GPU: the fold's grouping SQL is theirs.
SHARED_TAILS = """
    SELECT account, gpu_uuid FROM gpu_tail
    GROUP BY account, gpu_uuid HAVING count(*) > 1 OR bool_or(share < 1)
"""


def update_tails(con: duckdb.DuckDBPyConnection, *, plain: bool = False) -> None:
    """After ``cand``'s rows are stored (and rolled up): their GPUs' gpu_last and gpu_tail.

    ``plain``: every GPU in ``cand`` has one row per time, none with a fraction, all
    newer than its tail (the fold's plain GPUs).
    """
    for statement in (*_TAIL_ROWS_PLAIN, *_WRITE_PLAIN_TAILS) if plain else (
            *_TAIL_ROWS_FROM_CAND, *_WRITE_TAILS):
        con.execute(statement)


def rebuild_tails(con: duckdb.DuckDBPyConnection) -> None:
    """The GPUs in ``redo`` (bulk loads): gpu_last and gpu_tail made anew from their samples."""
    for statement in (*_TAIL_ROWS_FROM_SAMPLES, *_WRITE_TAILS):
        con.execute(statement)


# Out-of-order arrivals (older than the GPU's tail): recompute the rollup of the
# affected GPUs from the day before their oldest new sample, from raw samples.
DELETE_REDO_DAYS = """
DELETE FROM usage_daily u USING redo r
WHERE u.account = r.account AND u.gpu_uuid = r.gpu_uuid AND u.day >= make_timestamp(r.from_us)::DATE
"""

RECOMPUTE_REDO = f"""
WITH seq AS (
    SELECT s.account, s.gpu_uuid, epoch_us(s.ts) AS t, r.from_us, {", ".join("s." + a.strip() for a in _ATTRS.split(","))}
    FROM samples s JOIN redo r ON s.account = r.account AND s.gpu_uuid = r.gpu_uuid
    WHERE s.ts >= make_timestamp(r.from_us - $cap_us)
),
{_closed_sql("from_us").strip()},
{_parts_sql("shares", floor_us="from_us").strip()}
{UPSERT_DAILY}
"""

REBUILD_ALL = f"""
WITH seq AS (
    SELECT account, gpu_uuid, epoch_us(ts) AS t, {_ATTRS} FROM samples
),
{_closed_sql().strip()},
{_parts_sql("shares").strip()}
INSERT INTO usage_daily BY NAME SELECT * FROM daily
"""

# A report from the rollup: whole days of closed intervals plus every GPU's tail (its last
# reading covers one interval, split across the workloads sampled then: gpu_tail holds
# their shares), clipped to the period.
REPORT_FROM_ROLLUP = """
SELECT team_id, model_tag, gpu_name, sum(covered_us), sum(energy_j), sum(idle_us), sum(shared_us)
FROM (
    SELECT team_id, model_tag, gpu_name, covered_us, energy_j, idle_us, shared_us
    FROM usage_daily WHERE account = $account AND day >= $from_day AND day <= $to_day
    UNION ALL
    SELECT coalesce(team_id, ''), coalesce(model_tag, ''), coalesce(gpu_name, ''),
           p_us * share, power_draw_w * p_us / 1e6 * share,  -- the next delta is not here yet
           CASE WHEN utilization_gpu_pct < $idle_pct THEN p_us * share ELSE 0 END,
           CASE WHEN share < 1 THEN p_us * share ELSE 0 END
    FROM (
        SELECT *, least(epoch_us(ts) + $interval_us, $p1) - greatest(epoch_us(ts), $p0) AS p_us
        FROM gpu_tail WHERE account = $account
    ) WHERE p_us > 0 AND share > 0
)
GROUP BY ALL
"""

# The same figures straight from raw samples (any interval or idle threshold).
REPORT_FROM_SAMPLES = f"""
WITH seq AS (
    SELECT s.account, s.gpu_uuid, epoch_us(s.ts) AS t, epoch_us(g.ts) AS last_t,
           {", ".join("s." + a.strip() for a in _ATTRS.split(","))}
    FROM samples s JOIN gpu_last g ON g.account = s.account AND g.gpu_uuid = s.gpu_uuid
    WHERE s.account = $account AND s.ts >= make_timestamp($p0 - $cap_us)
      AND s.ts < make_timestamp($p1 + $cap_us)
),
{_windowed_readings_sql("last_t").strip()},
cov AS (
    SELECT *, CASE WHEN nxt IS NOT NULL THEN least(nxt - t, $cap_us)
                   WHEN last_t > t THEN $cap_us  -- its successor lies past the window
                   ELSE $interval_us END AS full_us,
           -- a successor past the window lies over the cap away: power x time, as above
           {_INTERVAL_ENERGY} AS interval_energy_j
    FROM readings
),
clipped AS (
    SELECT *, least(t + full_us, $p1) - greatest(t, $p0) AS p_us FROM cov
),
{_shares_sql("clipped", "several").strip()}
SELECT coalesce(team_id, ''), coalesce(model_tag, ''), coalesce(gpu_name, ''),
       sum(p_us * share),
       sum(coalesce(interval_energy_j * p_us / full_us, power_draw_w * p_us / 1e6) * share),
       sum(CASE WHEN utilization_gpu_pct < $idle_pct THEN p_us * share ELSE 0 END),
       sum(CASE WHEN share < 1 THEN p_us * share ELSE 0 END)
FROM shares WHERE p_us > 0 AND share > 0
GROUP BY ALL
"""

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
GPU's totals are what it alone would be billed. The common single-row case
takes its share straight from its reading (no join back to the rows).
"""

from __future__ import annotations

DAY_US = 86_400_000_000
# The rule usage_daily was computed by, kept as that table's comment; a store whose
# rollup was built by an older rule is rebuilt on open. 2: an interval's energy is the
# next sample's energy_delta_j (1 used the sample's own delta, which covers the time before it).
# 3: rows of one GPU at one time are one reading split across workloads (gpu_fraction).
ROLLUP_METHOD = "usage rule 3"

# A row's columns the rule reads (besides account, gpu_uuid and its time).
_ATTRS = ("gpu_name, team_id, model_tag, gpu_fraction, power_draw_w, energy_delta_j, "
          "utilization_gpu_pct")


def _readings_sql(source: str, extra: str = "") -> str:
    """``readings``: one GPU reading per (account, gpu_uuid, t) of ``source``.

    ``n`` rows; the largest power, energy delta and utilization; ``fixed``, the sum
    of their fractions, and ``free``, the rows without one. A single row's own
    attributes ride along (the min of one value), so it needs no join back.
    ``extra``: more columns constant per GPU (e.g. ``from_us``), carried through.
    """
    carried = f", {extra}" if extra else ""
    return f"""
    readings AS (
        SELECT account, gpu_uuid, t{carried}, count(*) AS n,
               max(power_draw_w) AS power_draw_w, max(energy_delta_j) AS energy_delta_j,
               max(utilization_gpu_pct) AS utilization_gpu_pct,
               coalesce(sum(gpu_fraction), 0) AS fixed, count(*) - count(gpu_fraction) AS free,
               min(gpu_name) AS gpu_name, min(team_id) AS team_id, min(model_tag) AS model_tag,
               min(gpu_fraction) AS gpu_fraction
        FROM {source} GROUP BY ALL
    )"""


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


# A GPU's tail (gpu_last) as rows: one per workload sampled at its newest time.
_TAIL_ROWS = """
    SELECT g.account, g.gpu_uuid, epoch_us(g.ts) AS t, w.gpu_name, w.team_id, w.model_tag,
           w.gpu_fraction, g.power_draw_w, g.energy_delta_j, g.utilization_gpu_pct
    FROM gpu_last g, (SELECT unnest(g.workloads) AS w)"""


# In-order arrivals: the GPU's previous tail plus the new rows, windowed; every
# reading with a successor gets its final covered time, added to the daily rollup.
APPEND_IN_ORDER = f"""
WITH seq AS (
    {_TAIL_ROWS.strip()}
    WHERE (g.account, g.gpu_uuid) IN (SELECT account, gpu_uuid FROM cand WHERE NOT ooo)
    UNION ALL
    SELECT account, gpu_uuid, epoch_us(ts) AS t, {_ATTRS} FROM cand WHERE NOT ooo
),
{_closed_sql().strip()},
{_parts_sql("shares").strip()}
{UPSERT_DAILY}
"""

# A GPU's tail (gpu_last) after ``cand``: its newest time and every workload sampled then.
# Rows newer than the tail replace it; rows at the tail's own time (a workload's row that
# came later) join its workloads, and the reading keeps the largest power, delta and
# utilization. The latest receive time and the newest known hostname win.
_NEWER = "excluded.ts > gpu_last.ts"
_SAME = "excluded.ts = gpu_last.ts"
UPSERT_GPU_LAST = f"""
    INSERT INTO gpu_last BY NAME
    SELECT c.account, c.gpu_uuid, c.ts, min(c.gpu_name) AS gpu_name, min(c.team_id) AS team_id,
           min(c.model_tag) AS model_tag, max(c.power_draw_w) AS power_draw_w,
           max(c.energy_delta_j) AS energy_delta_j, max(c.utilization_gpu_pct) AS utilization_gpu_pct,
           any_value(m.received_at) AS received_at, any_value(m.hostname) AS hostname,
           list({{'gpu_name': c.gpu_name, 'team_id': c.team_id, 'model_tag': c.model_tag,
                 'gpu_fraction': c.gpu_fraction}}) AS workloads
    FROM cand c
    JOIN (SELECT account, gpu_uuid, max(ts) AS ts, max(received_at) AS received_at,
                 arg_max(hostname, ts) AS hostname
          FROM cand GROUP BY account, gpu_uuid) m
      ON c.account = m.account AND c.gpu_uuid = m.gpu_uuid AND c.ts = m.ts
    GROUP BY c.account, c.gpu_uuid, c.ts
    ON CONFLICT DO UPDATE SET
        {", ".join(f"{c} = CASE WHEN {_NEWER} THEN excluded.{c} ELSE gpu_last.{c} END"
                   for c in ("ts", "gpu_name", "team_id", "model_tag"))},
        {", ".join(f"{c} = CASE WHEN {_NEWER} THEN excluded.{c} "
                   f"WHEN {_SAME} THEN greatest(excluded.{c}, gpu_last.{c}) ELSE gpu_last.{c} END"
                   for c in ("power_draw_w", "energy_delta_j", "utilization_gpu_pct"))},
        workloads = CASE WHEN {_NEWER} THEN excluded.workloads
                         WHEN {_SAME} THEN list_concat(gpu_last.workloads, excluded.workloads)
                         ELSE gpu_last.workloads END,
        received_at = greatest(excluded.received_at, gpu_last.received_at),
        hostname = coalesce(excluded.hostname, gpu_last.hostname)
"""

# Bulk loads: the tail of every GPU in ``redo`` made anew from its samples.
REBUILD_TAILS = """
INSERT OR REPLACE INTO gpu_last BY NAME
SELECT s.account, s.gpu_uuid, s.ts, min(s.gpu_name) AS gpu_name, min(s.team_id) AS team_id,
       min(s.model_tag) AS model_tag, max(s.power_draw_w) AS power_draw_w,
       max(s.energy_delta_j) AS energy_delta_j, max(s.utilization_gpu_pct) AS utilization_gpu_pct,
       max(s.received_at) AS received_at, max(s.hostname) AS hostname,
       list({'gpu_name': s.gpu_name, 'team_id': s.team_id, 'model_tag': s.model_tag,
             'gpu_fraction': s.gpu_fraction}) AS workloads
FROM samples s
JOIN (SELECT s.account, s.gpu_uuid, max(s.ts) AS ts
      FROM samples s JOIN redo r ON s.account = r.account AND s.gpu_uuid = r.gpu_uuid
      GROUP BY ALL) m
  ON s.account = m.account AND s.gpu_uuid = m.gpu_uuid AND s.ts = m.ts
GROUP BY s.account, s.gpu_uuid, s.ts
"""

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

# A report from the rollup: whole days of closed intervals plus every GPU's tail
# (its last reading covers one interval, split across its workloads), clipped to the period.
REPORT_FROM_ROLLUP = f"""
WITH seq AS (
    {_TAIL_ROWS.strip()}
    WHERE g.account = $account AND epoch_us(g.ts) + $interval_us > $p0 AND epoch_us(g.ts) < $p1
),
{_readings_sql("seq").strip()},
tails AS (
    SELECT *, least(t + $interval_us, $p1) - greatest(t, $p0) AS p_us FROM readings
),
{_shares_sql("tails", "seq").strip()}
SELECT team_id, model_tag, gpu_name, sum(covered_us), sum(energy_j), sum(idle_us), sum(shared_us)
FROM (
    SELECT team_id, model_tag, gpu_name, covered_us, energy_j, idle_us, shared_us
    FROM usage_daily WHERE account = $account AND day >= $from_day AND day <= $to_day
    UNION ALL
    SELECT coalesce(team_id, ''), coalesce(model_tag, ''), coalesce(gpu_name, ''),
           p_us * share, power_draw_w * p_us / 1e6 * share,  -- the next delta is not here yet
           CASE WHEN utilization_gpu_pct < $idle_pct THEN p_us * share ELSE 0 END,
           CASE WHEN share < 1 THEN p_us * share ELSE 0 END
    FROM shares WHERE p_us > 0 AND share > 0
)
GROUP BY ALL
"""

# The same figures straight from raw samples (any interval or idle threshold).
REPORT_FROM_SAMPLES = f"""
WITH seq AS (
    SELECT account, gpu_uuid, epoch_us(ts) AS t, {_ATTRS}
    FROM samples
    WHERE account = $account AND ts >= make_timestamp($p0 - $cap_us) AND ts < make_timestamp($p1 + $cap_us)
),
{_readings_sql("seq").strip()},
win AS (
    SELECT r.*, lead(t) OVER w AS nxt, lead(r.energy_delta_j) OVER w AS nxt_energy_j,
           epoch_us(g.ts) AS last_t
    FROM readings r JOIN gpu_last g ON g.account = $account AND g.gpu_uuid = r.gpu_uuid
    WINDOW w AS (PARTITION BY r.gpu_uuid ORDER BY t)
),
cov AS (
    SELECT *, CASE WHEN nxt IS NOT NULL THEN least(nxt - t, $cap_us)
                   WHEN last_t > t THEN $cap_us  -- its successor lies past the window
                   ELSE $interval_us END AS full_us,
           -- a successor past the window lies over the cap away: power x time, as above
           {_INTERVAL_ENERGY} AS interval_energy_j
    FROM win
),
clipped AS (
    SELECT *, least(t + full_us, $p1) - greatest(t, $p0) AS p_us FROM cov
),
{_shares_sql("clipped", "seq").strip()}
SELECT coalesce(team_id, ''), coalesce(model_tag, ''), coalesce(gpu_name, ''),
       sum(p_us * share),
       sum(coalesce(interval_energy_j * p_us / full_us, power_draw_w * p_us / 1e6) * share),
       sum(CASE WHEN utilization_gpu_pct < $idle_pct THEN p_us * share ELSE 0 END),
       sum(CASE WHEN share < 1 THEN p_us * share ELSE 0 END)
FROM shares WHERE p_us > 0 AND share > 0
GROUP BY ALL
"""

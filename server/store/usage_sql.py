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
"""

from __future__ import annotations

DAY_US = 86_400_000_000
# The rule usage_daily was computed by, kept as that table's comment; a store whose
# rollup was built by an older rule is rebuilt on open. 2: an interval's energy is the
# next sample's energy_delta_j (1 used the sample's own delta, which covers the time before it).
ROLLUP_METHOD = "usage rule 2"


def _parts_sql(source: str, *, floor_us: str | None = None) -> str:
    """Split each covered interval of ``source`` (a, full_us, attributes) at midnight.

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
               interval_energy_j, utilization_gpu_pct, full_us,
               d0 AS day_us, least(b, d0 + {DAY_US}) - a AS part_us
        FROM iv WHERE {first}
        UNION ALL
        SELECT account, gpu_uuid, team_id, model_tag, gpu_name, power_draw_w,
               interval_energy_j, utilization_gpu_pct, full_us,
               d0 + {DAY_US} AS day_us, b - (d0 + {DAY_US}) AS part_us
        FROM iv WHERE b > d0 + {DAY_US} AND {second}
    ),
    daily AS (
        SELECT account, make_timestamp(day_us)::DATE AS day, gpu_uuid,
               coalesce(team_id, '') AS team_id, coalesce(model_tag, '') AS model_tag,
               coalesce(gpu_name, '') AS gpu_name,
               sum(part_us)::BIGINT AS covered_us,
               sum(coalesce(interval_energy_j * part_us / full_us, power_draw_w * part_us / 1e6))
                   AS energy_j,
               sum(CASE WHEN utilization_gpu_pct < $idle_pct THEN part_us ELSE 0 END)::BIGINT
                   AS idle_us
        FROM parts WHERE part_us > 0
        GROUP BY ALL
    )"""


UPSERT_DAILY = """
    INSERT INTO usage_daily BY NAME SELECT * FROM daily
    ON CONFLICT DO UPDATE SET
        covered_us = usage_daily.covered_us + excluded.covered_us,
        energy_j = usage_daily.energy_j + excluded.energy_j,
        idle_us = usage_daily.idle_us + excluded.idle_us
"""

# The energy of the interval [t, next): the NEXT sample's energy_delta_j ("energy consumed
# since last sample"), when that sample follows within the cap; after a longer gap its
# delta spans time that is not billed, so the interval falls back to power x time.
_INTERVAL_ENERGY = "CASE WHEN nxt - t <= $cap_us THEN nxt_energy_j END"

_ATTRS = "gpu_name, team_id, model_tag, power_draw_w, energy_delta_j, utilization_gpu_pct"

# In-order arrivals: the GPU's previous tail plus the new rows, windowed; every
# row with a successor gets its final covered time, added to the daily rollup.
APPEND_IN_ORDER = f"""
WITH seq AS (
    SELECT account, gpu_uuid, epoch_us(ts) AS t, {_ATTRS} FROM gpu_last
    WHERE (account, gpu_uuid) IN (SELECT account, gpu_uuid FROM cand WHERE NOT ooo)
    UNION ALL
    SELECT account, gpu_uuid, epoch_us(ts) AS t, {_ATTRS} FROM cand WHERE NOT ooo
),
win AS (
    SELECT *, lead(t) OVER w AS nxt, lead(energy_delta_j) OVER w AS nxt_energy_j FROM seq
    WINDOW w AS (PARTITION BY account, gpu_uuid ORDER BY t)
),
closed AS (
    SELECT *, t AS a, least(nxt - t, $cap_us) AS full_us,
           {_INTERVAL_ENERGY} AS interval_energy_j
    FROM win WHERE nxt IS NOT NULL
),
{_parts_sql("closed").strip()}
{UPSERT_DAILY}
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
win AS (
    SELECT *, lead(t) OVER w AS nxt, lead(energy_delta_j) OVER w AS nxt_energy_j FROM seq
    WINDOW w AS (PARTITION BY account, gpu_uuid ORDER BY t)
),
closed AS (
    SELECT *, t AS a, least(nxt - t, $cap_us) AS full_us,
           {_INTERVAL_ENERGY} AS interval_energy_j
    FROM win WHERE nxt IS NOT NULL
),
{_parts_sql("closed", floor_us="from_us").strip()}
{UPSERT_DAILY}
"""

REBUILD_ALL = f"""
WITH seq AS (
    SELECT account, gpu_uuid, epoch_us(ts) AS t, {_ATTRS} FROM samples
),
win AS (
    SELECT *, lead(t) OVER w AS nxt, lead(energy_delta_j) OVER w AS nxt_energy_j FROM seq
    WINDOW w AS (PARTITION BY account, gpu_uuid ORDER BY t)
),
closed AS (
    SELECT *, t AS a, least(nxt - t, $cap_us) AS full_us,
           {_INTERVAL_ENERGY} AS interval_energy_j
    FROM win WHERE nxt IS NOT NULL
),
{_parts_sql("closed").strip()}
INSERT INTO usage_daily BY NAME SELECT * FROM daily
"""

# A report from the rollup: whole days of closed intervals plus every GPU's tail
# (its last sample covers one interval), clipped to the period.
REPORT_FROM_ROLLUP = """
SELECT team_id, model_tag, gpu_name, sum(covered_us)::BIGINT, sum(energy_j), sum(idle_us)::BIGINT
FROM (
    SELECT team_id, model_tag, gpu_name, covered_us, energy_j, idle_us
    FROM usage_daily WHERE account = $account AND day >= $from_day AND day <= $to_day
    UNION ALL
    SELECT coalesce(team_id, ''), coalesce(model_tag, ''), coalesce(gpu_name, ''),
           p_us, power_draw_w * p_us / 1e6,  -- the next sample's delta is not here yet
           CASE WHEN utilization_gpu_pct < $idle_pct THEN p_us ELSE 0 END
    FROM (
        SELECT *, least(epoch_us(ts) + $interval_us, $p1) - greatest(epoch_us(ts), $p0) AS p_us
        FROM gpu_last WHERE account = $account
    ) WHERE p_us > 0
)
GROUP BY ALL
"""

# The same figures straight from raw samples (any interval or idle threshold).
REPORT_FROM_SAMPLES = f"""
WITH seq AS (
    SELECT gpu_uuid, epoch_us(ts) AS t, gpu_name, team_id, model_tag, power_draw_w,
           energy_delta_j, utilization_gpu_pct
    FROM samples
    WHERE account = $account AND ts >= make_timestamp($p0 - $cap_us) AND ts < make_timestamp($p1 + $cap_us)
),
win AS (
    SELECT seq.*, lead(t) OVER w AS nxt, lead(seq.energy_delta_j) OVER w AS nxt_energy_j,
           epoch_us(g.ts) AS last_t
    FROM seq JOIN gpu_last g ON g.account = $account AND g.gpu_uuid = seq.gpu_uuid
    WINDOW w AS (PARTITION BY seq.gpu_uuid ORDER BY t)
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
)
SELECT coalesce(team_id, ''), coalesce(model_tag, ''), coalesce(gpu_name, ''),
       sum(p_us)::BIGINT,
       sum(coalesce(interval_energy_j * p_us / full_us, power_draw_w * p_us / 1e6)),
       sum(CASE WHEN utilization_gpu_pct < $idle_pct THEN p_us ELSE 0 END)::BIGINT
FROM clipped WHERE p_us > 0
GROUP BY ALL
"""

"""Deterministic telemetry for the fleet in sample_data/fleet.toml: last month and this one so far.

The window runs from the first day of the previous month to its end (now, or
the end of a given day), so "this month", "last month" and "last 7 days" are
all whole, comparable periods. Every GPU of every node reports every 60 s;
busy/idle follows its job's schedule (continuous, business_hours, nightly,
adhoc); values come from ``hash()`` of (seed, GPU, minute), so the same inputs
always give the same rows. One host is offline and one stale at the end, and
their samples stop when their heartbeats did. The rows are generated inside
DuckDB (``generate_series``), which is what makes loading millions of them
take a few seconds.

    .venv/bin/python sample_data/generate.py --out sample.csv [--end 2026-03-31]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Collection
from datetime import UTC, date, datetime, timedelta
from typing import Any

from gpufleet.server.fleet import Fleet, default_fleet
from gpufleet.server.gpu.simulated import simulated_gpu_uuid

INTERVAL_S = 60
STALE_AFTER_INTERVALS = 3    # one node's agent stalled a quarter of an hour ago
OFFLINE_AFTER_INTERVALS = 12  # another's died an hour ago


def host_silence_s(fleet: Fleet, heartbeat_interval_s: float,
                   live_hosts: Collection[str] = ()) -> dict[str, float]:
    """Seconds each node has been silent (no heartbeat, no sample) at the window's end.

    The last node not in ``live_hosts`` is offline and the one before it stale;
    ``live_hosts`` are nodes something else keeps reporting (the console's demo
    nodes), which must not look dead in the data behind them.
    """
    silence = {n.name: 0.0 for n in fleet.nodes}
    candidates = [n.name for n in fleet.nodes if n.name not in set(live_hosts)]
    for name, intervals in zip(reversed(candidates), (OFFLINE_AFTER_INTERVALS, STALE_AFTER_INTERVALS),
                               strict=False):
        silence[name] = intervals * heartbeat_interval_s
    return silence


def gpu_rows(fleet: Fleet, minutes: int, silence_s: dict[str, float] | None = None) -> list[tuple[Any, ...]]:
    """One row per GPU and job on it: node, index, uuid, name, limits, the job's attribution,
    its sample count, and how many jobs share the GPU (a shared GPU has a row per job)."""
    silence_s = silence_s or {}
    rows = []
    for node in fleet.nodes:
        # a silent node's samples stop with its heartbeats: none in its last silent minutes
        samples = max(0, minutes - math.ceil(silence_s.get(node.name, 0.0) / INTERVAL_S))
        for index, arch in enumerate(node.gpus):
            spec = fleet.gpu_models[arch]
            jobs = fleet.jobs_for(node.name, index) or [None]
            uuid = simulated_gpu_uuid(fleet.seed, node.name, index)  # as the live simulated fleet
            # a shared GPU's memory reading is every resident model's
            resident_mb = sum(fleet.model(j.model).memory_mb for j in jobs if j is not None)
            for job in jobs:
                model = fleet.model(job.model) if job else None
                rows.append((
                    node.name, index, uuid, spec.name, spec.memory_mb, spec.power_limit_w,
                    spec.idle_power_w, spec.sm_clock_max_mhz, spec.memory_clock_mhz,
                    job.schedule if job else "idle", model.name if model else None,
                    model.team if model else None, resident_mb,
                    f"{job.scheduler}-{job.model}-{node.name}" if job else None,
                    job.scheduler if job else None, samples, len(jobs),
                ))
    return rows


GPU_COLUMNS = (
    "node VARCHAR, gpu_index INTEGER, gpu_uuid VARCHAR, gpu_name VARCHAR, memory_mb DOUBLE, "
    "power_limit_w DOUBLE, idle_power_w DOUBLE, sm_clock_mhz DOUBLE, memory_clock_mhz DOUBLE, "
    "schedule VARCHAR, model_tag VARCHAR, team_id VARCHAR, model_memory_mb DOUBLE, job_id VARCHAR, "
    "scheduler_source VARCHAR, samples INTEGER, jobs INTEGER"
)

# $start_us / $seed; `fleet_gpus` holds gpu_rows(), each GPU's `samples` minutes from the start.
# Busy is a 0..1 load factor by schedule; an idle-but-loaded GPU still holds its model's memory.
# A GPU shared by n jobs is one reading a minute (its load: each job's busy / n, summed) in
# n rows, one per job, each with its share of the load as gpu_fraction (SM basis, as the agent).
SAMPLES_SQL = """
WITH grid AS (
    SELECT g.*, m AS minute, $start_us + m * 60000000 AS t_us
    FROM fleet_gpus g, generate_series(0, g.samples - 1) AS s(m)
),
clock AS (
    SELECT *, (t_us // 3600000000) % 24 AS hour, (t_us // 86400000000 + 4) % 7 AS dow,
           t_us // 86400000000 AS day_no,
           (hash($seed, gpu_uuid, minute) % 1000000) / 1000000.0 AS r1,
           (hash($seed + 1, gpu_uuid, minute) % 1000000) / 1000000.0 AS r2
    FROM grid
),
load AS (
    SELECT *, CASE schedule
        WHEN 'continuous' THEN 0.78 + 0.12 * sin(2 * pi() * hour / 24) + 0.08 * r1
        WHEN 'business_hours' THEN CASE WHEN dow BETWEEN 1 AND 5 AND hour BETWEEN 8 AND 18
                                        THEN 0.65 + 0.3 * r1 ELSE 0.02 * r1 END
        WHEN 'nightly' THEN CASE WHEN hour >= 22 OR hour < 6 THEN 0.85 + 0.12 * r1 ELSE 0.01 * r1 END
        WHEN 'adhoc' THEN CASE WHEN hash($seed, gpu_uuid, day_no) % 3 = 0
                                    AND hour BETWEEN 10 + hash($seed, gpu_uuid, day_no) % 4
                                                 AND 13 + hash($seed, gpu_uuid, day_no) % 4
                               THEN 0.7 + 0.25 * r1 ELSE 0.015 * r1 END
        ELSE 0.0 END / jobs AS part
    FROM clock
),
shared AS (  -- the reading of a GPU with several jobs: their parts added up
    SELECT *, part AS busy, NULL::DOUBLE AS gpu_fraction FROM load WHERE jobs = 1
    UNION ALL
    SELECT *, sum(part) OVER (PARTITION BY gpu_uuid, minute) AS busy,
           part / sum(part) OVER (PARTITION BY gpu_uuid, minute) AS gpu_fraction
    FROM load WHERE jobs > 1
)
SELECT make_timestamp(t_us) AS ts, gpu_index, gpu_uuid,
       round(idle_power_w + (power_limit_w - idle_power_w) * busy * (0.92 + 0.08 * r2), 1) AS power_draw_w,
       round(100 * busy, 0) AS utilization_gpu_pct,
       round(70 * busy * (0.8 + 0.2 * r2), 0) AS utilization_memory_pct,
       round(32 + 48 * busy + 3 * r2, 0) AS temperature_c,
       round(CASE WHEN model_tag IS NULL THEN 0 ELSE model_memory_mb END
             + 6000 * busy * r2, 0) AS memory_used_mb,
       gpu_name, power_limit_w,
       round(60 * (idle_power_w + (power_limit_w - idle_power_w) * busy * (0.92 + 0.08 * r2)), 0)
           AS energy_delta_j,
       round(30 + 60 * busy, 0) AS fan_speed_pct, memory_mb AS memory_total_mb,
       round(sm_clock_mhz * (0.3 + 0.7 * busy), 0) AS sm_clock_mhz, memory_clock_mhz,
       CASE WHEN part * jobs > 0.05 THEN job_id END AS job_id,
       team_id, model_tag, scheduler_source, node AS hostname,
       -- as the agent: 4 digits, and a share that rounds to 0 is sent without one
       CASE WHEN round(gpu_fraction, 4) > 0 THEN round(gpu_fraction, 4) END AS gpu_fraction,
       CASE WHEN round(gpu_fraction, 4) > 0 THEN 'sm_utilization' END AS gpu_fraction_basis
FROM shared
"""


def sample_window(end: date | None, *, now: datetime | None = None) -> tuple[datetime, int]:
    """(first sample time, minutes): from the first of last month up to the end of ``end``, or now."""
    now = now or datetime.now(UTC)
    if end is None:
        # the last sample is this minute's, once its 2 s receive delay has passed
        stop = (now - timedelta(seconds=2)).replace(second=0, microsecond=0) + timedelta(minutes=1)
    else:
        stop = datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1)
    this_month = (stop - timedelta(minutes=1)).date().replace(day=1)
    last_month = (this_month - timedelta(days=1)).replace(day=1)
    start = datetime(last_month.year, last_month.month, 1, tzinfo=UTC)
    return start, int((stop - start) / timedelta(minutes=1))


def heartbeat_rows(fleet: Fleet, start: datetime, stop: datetime,
                   silence_s: dict[str, float]) -> list[tuple[Any, ...]]:
    """Hosts since ``start``: each last heard from at ``stop`` less its silence (see host_silence_s)."""
    silence = silence_s
    rows = []
    for number, node in enumerate(fleet.nodes):
        last = stop - timedelta(seconds=silence[node.name] + number)
        rows.append((node.name, f"0.1.{number}", len(node.gpus), start, last))
    return rows


def main() -> None:
    import duckdb

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="CSV file to write")
    parser.add_argument("--end", type=date.fromisoformat, default=None, help="last day (default: today)")
    parser.add_argument("--heartbeat-interval", type=float, default=300.0,
                        help="agent heartbeat interval in seconds: how long the silent hosts have been silent")
    args = parser.parse_args()
    fleet = default_fleet()
    start, minutes = sample_window(args.end)
    con = duckdb.connect()
    con.execute(f"CREATE TABLE fleet_gpus ({GPU_COLUMNS})")
    rows = gpu_rows(fleet, minutes, host_silence_s(fleet, args.heartbeat_interval))
    con.executemany(f"INSERT INTO fleet_gpus VALUES ({', '.join('?' * len(rows[0]))})", rows)
    from gpufleet.server.store.timeutil import epoch_us

    con.execute(f"COPY ({SAMPLES_SQL}) TO '{args.out}' (HEADER)",
                {"start_us": epoch_us(start), "seed": fleet.seed})


if __name__ == "__main__":
    main()

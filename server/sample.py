"""Load the sample fleet's telemetry into a store, so chargeback has figures at once.

The window is last month and this month so far (sample_data/generate.py), so
"this month" and "last month" are both whole periods at the same load. The rows
are generated inside DuckDB by the generator's SQL (1.3 to 2.1 million rows
for 24 GPUs, depending on the day of the month) and written in one
transaction on the store's writer thread, with the usage rollup recomputed
for those GPUs.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Collection
from datetime import UTC, date, datetime, timedelta
from types import ModuleType

import duckdb

from gpufleet.server.fleet import Fleet, default_fleet, sample_data_dir
from gpufleet.server.store import MetricsStore, simulated, usage_sql
from gpufleet.server.store.timeutil import epoch_us, from_db, to_db

log = logging.getLogger("gpufleet.sample")

# With end=None, sample data this recent counts as loaded: no second generation pass.
FRESH_ENOUGH = timedelta(days=1)

_COLUMNS = (
    "ts, gpu_index, gpu_uuid, power_draw_w, utilization_gpu_pct, utilization_memory_pct, "
    "temperature_c, memory_used_mb, gpu_name, power_limit_w, energy_delta_j, fan_speed_pct, "
    "memory_total_mb, sm_clock_mhz, memory_clock_mhz, job_id, team_id, model_tag, "
    "scheduler_source, hostname, gpu_fraction, gpu_fraction_basis"
)


def _generator() -> ModuleType:
    path = sample_data_dir() / "generate.py"
    spec = importlib.util.spec_from_file_location("gpufleet_sample_generate", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"sample generator not found at {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sample_fleet_gpu_uuids(fleet: Fleet | None = None) -> list[str]:
    """The UUIDs of the described fleet's GPUs: the sample data's, and the live simulated fleet's."""
    from gpufleet.server.gpu.simulated import simulated_gpu_uuid

    fleet = fleet or default_fleet()
    return [simulated_gpu_uuid(fleet.seed, node.name, index)
            for node in fleet.nodes for index in range(len(node.gpus))]


def load_sample_month(store: MetricsStore, account: str, *, end: date | None = None,
                      fleet: Fleet | None = None, now: datetime | None = None,
                      heartbeat_interval_s: float = 300.0, live_hosts: Collection[str] = ()) -> int:
    """Insert last month and this month up to ``end`` (default now); returns rows inserted.

    Idempotent: rows already stored are skipped. With ``end=None`` an account
    whose sample-fleet data reaches into the last day gets nothing more (a
    cheap check); older sample data is topped up to now. One host is offline
    and one stale at the end, their samples stopping with their heartbeats;
    ``live_hosts`` (nodes a caller keeps heartbeating, like the console's demo
    nodes) are never among them.
    """
    gen = _generator()
    fleet = fleet or default_fleet()
    now = now or datetime.now(UTC)
    start, minutes = gen.sample_window(end, now=now)
    stop = start + timedelta(minutes=minutes)
    silence = gen.host_silence_s(fleet, heartbeat_interval_s, live_hosts)
    gpus = gen.gpu_rows(fleet, minutes, silence)
    hb_rows = gen.heartbeat_rows(fleet, start, now if end is None else stop, silence)
    cap_us = 2 * store.rollup_params.interval_us

    def load(con: duckdb.DuckDBPyConnection) -> int:
        uuids = list(dict.fromkeys(g[2] for g in gpus))  # a shared GPU has a row per job
        latest = con.execute(
            "SELECT max(ts) FROM gpu_last WHERE account = ? AND list_contains(?, gpu_uuid)",
            [account, uuids],
        ).fetchone()[0]
        if end is None and latest is not None and from_db(latest) >= stop - FRESH_ENOUGH:
            return 0
        con.execute(f"CREATE OR REPLACE TEMP TABLE fleet_gpus ({gen.GPU_COLUMNS})")
        appender = con.appender("fleet_gpus")
        appender.append_rows(gpus)
        appender.flush()
        # A store that never held these GPUs needs no duplicate check (the common, first-launch case).
        skip_stored = "" if latest is None else """
            WHERE NOT EXISTS (
                SELECT 1 FROM samples s WHERE s.account = $account AND s.gpu_uuid = r.gpu_uuid
                  AND s.ts = r.ts AND s.ts >= $lo AND s.ts < $hi
                  AND coalesce(s.job_id, '') = coalesce(r.job_id, '')
                  AND coalesce(s.team_id, '') = coalesce(r.team_id, '')
                  AND coalesce(s.model_tag, '') = coalesce(r.model_tag, ''))"""
        inserted = con.execute(
            f"""INSERT INTO samples (account, {_COLUMNS}, received_at)
                SELECT $account, {_COLUMNS}, ts + INTERVAL 2 SECOND FROM ({gen.SAMPLES_SQL}) r{skip_stored}""",
            {"account": account, "start_us": epoch_us(start), "seed": fleet.seed}
            | ({} if latest is None else {"lo": to_db(start), "hi": to_db(stop)}),
        ).fetchone()[0]
        con.execute("DROP TABLE fleet_gpus")
        if not inserted:
            return 0
        # every GPU's tail, then its rollup from the day before the window
        con.execute(
            """CREATE OR REPLACE TEMP TABLE redo AS
               SELECT $account AS account, unnest($uuids) AS gpu_uuid, $from_us AS from_us""",
            {"account": account, "uuids": uuids,
             "from_us": epoch_us(start) - epoch_us(start) % usage_sql.DAY_US - usage_sql.DAY_US},
        )
        usage_sql.rebuild_tails(con)
        con.execute(usage_sql.DELETE_REDO_DAYS)
        con.execute(usage_sql.RECOMPUTE_REDO, {"cap_us": cap_us, "idle_pct": store.rollup_params.idle_pct})
        for host, version, count, first, last in hb_rows:
            con.execute(
                """INSERT INTO hosts VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT DO UPDATE SET agent_version = excluded.agent_version,
                       gpu_count = excluded.gpu_count,
                       first_heartbeat = least(hosts.first_heartbeat, excluded.first_heartbeat),
                       last_heartbeat = greatest(hosts.last_heartbeat, excluded.last_heartbeat)""",
                [account, host, version, count, to_db(first), to_db(last)],
            )
        return int(inserted)

    store.mark_simulated(simulated.SAMPLE_DATA)  # before the rows: never unmarked simulated data
    inserted = store.writer.call(load)
    log.info("sample month: %d rows for account %s", inserted, account)
    return inserted

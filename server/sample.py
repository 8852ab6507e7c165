"""Load the sample fleet's month of telemetry into a store, so chargeback has figures at once.

The rows are generated inside DuckDB by sample_data/generate.py's SQL (about a
million rows in a second or two) and written in one transaction on the
store's writer thread, with the usage rollup recomputed for those GPUs.
"""

from __future__ import annotations

import importlib.util
import logging
from datetime import UTC, date, datetime, timedelta
from types import ModuleType

import duckdb

from server.fleet import Fleet, default_fleet, sample_data_dir
from server.store import MetricsStore, usage_sql
from server.store.timeutil import epoch_us, to_db

log = logging.getLogger("gpufleet.sample")

_COLUMNS = (
    "ts, gpu_index, gpu_uuid, power_draw_w, utilization_gpu_pct, utilization_memory_pct, "
    "temperature_c, memory_used_mb, gpu_name, power_limit_w, energy_delta_j, fan_speed_pct, "
    "memory_total_mb, sm_clock_mhz, memory_clock_mhz, job_id, team_id, model_tag, "
    "scheduler_source, hostname"
)


def _generator() -> ModuleType:
    path = sample_data_dir() / "generate.py"
    spec = importlib.util.spec_from_file_location("gpufleet_sample_generate", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"sample generator not found at {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_sample_month(store: MetricsStore, account: str, *, end: date | None = None,
                      fleet: Fleet | None = None, now: datetime | None = None,
                      heartbeat_interval_s: float = 300.0) -> int:
    """Insert the sample month (ending ``end``, default now); returns rows inserted.

    Idempotent: rows already stored are skipped, and with ``end=None`` an account
    that already holds the sample fleet's data gets nothing more.
    """
    gen = _generator()
    fleet = fleet or default_fleet()
    now = now or datetime.now(UTC)
    start, minutes = gen.month_window(end, now=now)
    stop = start + timedelta(minutes=minutes)
    gpus = gen.gpu_rows(fleet)
    hb_rows = gen.heartbeat_rows(fleet, now if end is None else stop, heartbeat_interval_s)
    cap_us = 2 * store.rollup_params.interval_us

    def load(con: duckdb.DuckDBPyConnection) -> int:
        uuids = [g[2] for g in gpus]
        if end is None:
            have = con.execute(
                "SELECT count(*) FROM gpu_last WHERE account = ? AND list_contains(?, gpu_uuid)",
                [account, uuids],
            ).fetchone()[0]
            if have:
                return 0
        con.execute(f"CREATE OR REPLACE TEMP TABLE fleet_gpus ({gen.GPU_COLUMNS})")
        appender = con.appender("fleet_gpus")
        appender.append_rows(gpus)
        appender.flush()
        params = {"start_us": epoch_us(start), "minutes": minutes, "seed": fleet.seed}
        con.execute(f"CREATE OR REPLACE TEMP TABLE sample_rows AS {gen.SAMPLES_SQL}", params)
        inserted = con.execute(
            f"""INSERT INTO samples (account, {_COLUMNS}, received_at)
                SELECT $account, {_COLUMNS}, ts + INTERVAL 2 SECOND FROM sample_rows r
                WHERE NOT EXISTS (
                    SELECT 1 FROM samples s WHERE s.account = $account AND s.gpu_uuid = r.gpu_uuid
                      AND s.ts = r.ts AND s.ts >= $lo AND s.ts < $hi)""",
            {"account": account, "lo": to_db(start), "hi": to_db(stop)},
        ).fetchone()[0]
        con.execute("DROP TABLE sample_rows")
        con.execute("DROP TABLE fleet_gpus")
        if not inserted:
            return 0
        # every GPU's tail, then its rollup from the day before the month
        con.execute(
            """INSERT OR REPLACE INTO gpu_last BY NAME
               SELECT account, gpu_uuid, ts, gpu_name, team_id, model_tag, power_draw_w,
                      energy_delta_j, utilization_gpu_pct, received_at, hostname
               FROM samples WHERE account = $account AND list_contains($uuids, gpu_uuid)
               QUALIFY row_number() OVER (PARTITION BY gpu_uuid ORDER BY ts DESC) = 1""",
            {"account": account, "uuids": uuids},
        )
        con.execute(
            """CREATE OR REPLACE TEMP TABLE redo AS
               SELECT $account AS account, unnest($uuids) AS gpu_uuid, $from_us AS from_us""",
            {"account": account, "uuids": uuids,
             "from_us": epoch_us(start) - epoch_us(start) % usage_sql.DAY_US - usage_sql.DAY_US},
        )
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

    inserted = store.writer.call(load)
    log.info("sample month: %d rows for account %s", inserted, account)
    return inserted

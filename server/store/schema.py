"""The store's versioned schema: a schema_version table and ordered migrations.

Timestamps are stored as naive ``TIMESTAMP`` values in UTC so no SQL depends on
the session time zone; the Python side adds ``tzinfo=UTC`` when reading.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import duckdb

log = logging.getLogger("gpufleet.store")

# Each migration is a list of statements applied in one transaction; never edit
# a released one, append a new one.
MIGRATIONS: Sequence[Sequence[str]] = (
    # 1: accounts and keys, the store's first tables
    (
        """CREATE TABLE accounts (
            id VARCHAR PRIMARY KEY,
            created_at TIMESTAMP NOT NULL
        )""",
        """CREATE TABLE api_keys (
            id VARCHAR PRIMARY KEY,
            account VARCHAR NOT NULL,
            name VARCHAR NOT NULL,
            scopes VARCHAR[] NOT NULL,
            prefix VARCHAR NOT NULL,
            secret_sha256 VARCHAR NOT NULL UNIQUE,
            created_at TIMESTAMP NOT NULL,
            last_used_at TIMESTAMP,
            revoked_at TIMESTAMP
        )""",
    ),
    # 2: samples, the per-GPU tail and the daily usage rollup chargeback reads
    (
        """CREATE TABLE samples (
            account VARCHAR NOT NULL,
            ts TIMESTAMP NOT NULL,
            gpu_index INTEGER NOT NULL,
            gpu_uuid VARCHAR NOT NULL,
            power_draw_w DOUBLE NOT NULL,
            utilization_gpu_pct DOUBLE NOT NULL,
            utilization_memory_pct DOUBLE NOT NULL,
            temperature_c DOUBLE NOT NULL,
            memory_used_mb DOUBLE NOT NULL,
            gpu_name VARCHAR,
            power_limit_w DOUBLE,
            energy_delta_j DOUBLE,
            fan_speed_pct DOUBLE,
            memory_total_mb DOUBLE,
            sm_clock_mhz DOUBLE,
            memory_clock_mhz DOUBLE,
            job_id VARCHAR,
            team_id VARCHAR,
            model_tag VARCHAR,
            scheduler_source VARCHAR,
            received_at TIMESTAMP NOT NULL
        )""",
        # the latest sample of every GPU: dedup fast path, rollup tail, host last-sample time
        """CREATE TABLE gpu_last (
            account VARCHAR NOT NULL,
            gpu_uuid VARCHAR NOT NULL,
            ts TIMESTAMP NOT NULL,
            gpu_name VARCHAR,
            team_id VARCHAR,
            model_tag VARCHAR,
            power_draw_w DOUBLE NOT NULL,
            energy_delta_j DOUBLE,
            utilization_gpu_pct DOUBLE NOT NULL,
            received_at TIMESTAMP NOT NULL,
            PRIMARY KEY (account, gpu_uuid)
        )""",
        # covered time of every sample that has a successor, split at UTC midnights
        """CREATE TABLE usage_daily (
            account VARCHAR NOT NULL,
            day DATE NOT NULL,
            gpu_uuid VARCHAR NOT NULL,
            team_id VARCHAR NOT NULL,
            model_tag VARCHAR NOT NULL,
            gpu_name VARCHAR NOT NULL,
            covered_us BIGINT NOT NULL,
            energy_j DOUBLE NOT NULL,
            idle_us BIGINT NOT NULL,
            PRIMARY KEY (account, day, gpu_uuid, team_id, model_tag, gpu_name)
        )""",
        # the parameters the rollup was computed with; other parameters read raw samples
        """CREATE TABLE rollup_meta (
            interval_us BIGINT NOT NULL,
            idle_utilization_pct DOUBLE NOT NULL
        )""",
    ),
    # 3: agents' heartbeats, which GPUs a host reported, and the purge audit
    (
        """CREATE TABLE hosts (
            account VARCHAR NOT NULL,
            hostname VARCHAR NOT NULL,
            agent_version VARCHAR NOT NULL,
            gpu_count INTEGER NOT NULL,
            first_heartbeat TIMESTAMP NOT NULL,
            last_heartbeat TIMESTAMP NOT NULL,
            PRIMARY KEY (account, hostname)
        )""",
        """CREATE TABLE purge_audit (
            id BIGINT PRIMARY KEY,
            account VARCHAR NOT NULL,
            key_name VARCHAR,
            force BOOLEAN NOT NULL,
            purged_at TIMESTAMP NOT NULL,
            status VARCHAR NOT NULL,
            result_json VARCHAR NOT NULL
        )""",
        "CREATE SEQUENCE purge_audit_seq",
    ),
    # 4: samples may name the host that sent them (additive `hostname` field)
    (
        "ALTER TABLE samples ADD COLUMN hostname VARCHAR",
        "ALTER TABLE gpu_last ADD COLUMN hostname VARCHAR",
    ),
    # 5: samples stored but not yet folded into usage_daily and gpu_last (the writer
    # folds them in batches; committed with the samples, so a crash loses none)
    (
        """CREATE TABLE rollup_pending (
            account VARCHAR NOT NULL,
            gpu_uuid VARCHAR NOT NULL,
            ts TIMESTAMP NOT NULL,
            gpu_name VARCHAR,
            team_id VARCHAR,
            model_tag VARCHAR,
            power_draw_w DOUBLE NOT NULL,
            energy_delta_j DOUBLE,
            utilization_gpu_pct DOUBLE NOT NULL,
            received_at TIMESTAMP NOT NULL,
            hostname VARCHAR
        )""",
    ),
    # 6: pending samples are no longer copied: a time at or before every sample not yet
    # folded into usage_daily and gpu_last (none when nothing is pending), see pending.py
    (
        "CREATE TABLE pending_since (since TIMESTAMP NOT NULL)",
    ),
    # 7: the audit of POST /v1/gpu/processes/{pid}/signal: who asked, what, when, outcome
    (
        """CREATE TABLE signal_audit (
            id BIGINT PRIMARY KEY,
            account VARCHAR NOT NULL,
            key_name VARCHAR,
            signalled_at TIMESTAMP NOT NULL,
            pid BIGINT NOT NULL,
            signal VARCHAR NOT NULL,
            process_name VARCHAR,
            process_user VARCHAR,
            command VARCHAR,
            gpu_indices INTEGER[],
            memory_mb BIGINT,
            outcome VARCHAR NOT NULL,
            detail VARCHAR NOT NULL
        )""",
        "CREATE SEQUENCE signal_audit_seq",
    ),
    # 8: a rotation keeps the key (its id, name, scopes) and replaces its secret in place;
    # each rotation is remembered with the prefix of the secret it retired
    (
        """CREATE TABLE key_rotations (
            key_id VARCHAR NOT NULL,
            rotated_at TIMESTAMP NOT NULL,
            old_prefix VARCHAR NOT NULL
        )""",
    ),
    # 9: facts about the store itself: since when (and from what) it holds simulated
    # samples, which every report from it then says (see simulated.py)
    (
        "CREATE TABLE store_info (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)",
    ),
    # 10: shared GPUs. A sample is one workload's row (identity: account, gpu_uuid, ts and
    # job_id, team_id, model_tag) with its additive gpu_fraction (and how the agent measured
    # it, gpu_fraction_basis); gpu_tail holds every workload sampled at each GPU's newest
    # time with its share (and what nobody claimed), so the open tail is split without
    # work at report time; the rollup holds shares of GPU time (DOUBLE) and the part of it
    # spent on shared GPUs. usage_daily is derived: made anew here, rebuilt from samples at
    # open (its rule comment is gone, see usage_sql.ROLLUP_METHOD). Each step may run
    # again on a store that has it (a store taken back to an older version by hand).
    (
        "ALTER TABLE samples ADD COLUMN IF NOT EXISTS gpu_fraction DOUBLE",
        "ALTER TABLE samples ADD COLUMN IF NOT EXISTS gpu_fraction_basis VARCHAR",
        """CREATE TABLE IF NOT EXISTS gpu_tail (
            account VARCHAR NOT NULL,
            gpu_uuid VARCHAR NOT NULL,
            ts TIMESTAMP NOT NULL,
            job_id VARCHAR,
            team_id VARCHAR,
            model_tag VARCHAR,
            gpu_name VARCHAR,
            gpu_fraction DOUBLE,
            power_draw_w DOUBLE NOT NULL,
            energy_delta_j DOUBLE,
            utilization_gpu_pct DOUBLE NOT NULL,
            share DOUBLE NOT NULL,
            unclaimed BOOLEAN NOT NULL
        )""",
        """INSERT INTO gpu_tail
           SELECT account, gpu_uuid, ts, NULL, team_id, model_tag, gpu_name, NULL, power_draw_w,
                  energy_delta_j, utilization_gpu_pct, 1.0, false
           FROM gpu_last g
           WHERE NOT EXISTS (SELECT 1 FROM gpu_tail t
                             WHERE t.account = g.account AND t.gpu_uuid = g.gpu_uuid)""",
        "DROP TABLE IF EXISTS usage_daily",
        """CREATE TABLE usage_daily (
            account VARCHAR NOT NULL,
            day DATE NOT NULL,
            gpu_uuid VARCHAR NOT NULL,
            team_id VARCHAR NOT NULL,
            model_tag VARCHAR NOT NULL,
            gpu_name VARCHAR NOT NULL,
            covered_us DOUBLE NOT NULL,
            energy_j DOUBLE NOT NULL,
            idle_us DOUBLE NOT NULL,
            shared_us DOUBLE NOT NULL,
            PRIMARY KEY (account, day, gpu_uuid, team_id, model_tag, gpu_name)
        )""",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNewError(RuntimeError):
    """The database was written by a newer gpufleet than this one."""


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at TIMESTAMP NOT NULL)"
    )
    row = con.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Apply every migration newer than the stored version; returns the version now."""
    version = current_version(con)
    if version > SCHEMA_VERSION:
        raise SchemaTooNewError(
            f"the store has schema version {version}; this gpufleet knows up to {SCHEMA_VERSION}"
        )
    for number in range(version + 1, SCHEMA_VERSION + 1):
        con.begin()
        try:
            for statement in MIGRATIONS[number - 1]:
                con.execute(statement)
            con.execute(
                "INSERT INTO schema_version VALUES (?, ?)", [number, datetime.now(UTC).replace(tzinfo=None)]
            )
            con.commit()
        except BaseException:
            con.rollback()
            raise
        log.info("store schema migrated to version %d", number)
    return SCHEMA_VERSION

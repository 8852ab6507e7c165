"""Agent heartbeats, the hosts list, and the purge audit trail.

Samples do not have to name their host (the documents' sample has no such
field), so a host's ``last_sample_at`` comes from the optional additive
``hostname`` field of samples: the latest receive time of any GPU whose latest
sample named that host. Agents that do not send it show no last-sample time.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from gpufleet.server.schemas import Heartbeat, HostInfo, HostStatus, PurgeResult
from gpufleet.server.store.timeutil import from_db, to_db

STALE_INTERVALS = 2
OFFLINE_INTERVALS = 10


def host_status(last_heartbeat: datetime, now: datetime, heartbeat_interval_s: float) -> HostStatus:
    silent = now - last_heartbeat
    if silent >= timedelta(seconds=OFFLINE_INTERVALS * heartbeat_interval_s):
        return "offline"
    if silent >= timedelta(seconds=STALE_INTERVALS * heartbeat_interval_s):
        return "stale"
    return "alive"


def write_heartbeat(con: duckdb.DuckDBPyConnection, account: str, hb: Heartbeat, at: datetime) -> None:
    when = to_db(at)
    con.execute(
        """INSERT INTO hosts VALUES (?, ?, ?, ?, ?, ?)
           ON CONFLICT DO UPDATE SET
               agent_version = excluded.agent_version, gpu_count = excluded.gpu_count,
               first_heartbeat = least(hosts.first_heartbeat, excluded.first_heartbeat),
               last_heartbeat = greatest(hosts.last_heartbeat, excluded.last_heartbeat)""",
        [account, hb.hostname, hb.agent_version, hb.gpu_count, when, when],
    )


def read_hosts(cur: duckdb.DuckDBPyConnection, account: str, now: datetime,
               heartbeat_interval_s: float) -> list[HostInfo]:
    rows = cur.execute(
        """SELECT h.hostname, h.agent_version, h.gpu_count, h.first_heartbeat, h.last_heartbeat,
                  (SELECT max(g.received_at) FROM gpu_last g
                   WHERE g.account = h.account AND g.hostname = h.hostname)
           FROM hosts h WHERE h.account = ? ORDER BY h.hostname""",
        [account],
    ).fetchall()
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    return [
        HostInfo(
            hostname=name, agent_version=version, gpu_count=count,
            first_heartbeat=from_db(first), last_heartbeat=from_db(last),
            last_sample_at=from_db(sample_at),
            status=host_status(from_db(last), now, heartbeat_interval_s),
        )
        for name, version, count, first, last, sample_at in rows
    ]


def write_purge(con: duckdb.DuckDBPyConnection, account: str, key_name: str | None, force: bool,
                result: PurgeResult) -> int:
    row = con.execute(
        """INSERT INTO purge_audit VALUES (nextval('purge_audit_seq'), ?, ?, ?, ?, ?, ?) RETURNING id""",
        [account, key_name, force, to_db(result.timestamp), result.status, result.model_dump_json()],
    ).fetchone()
    return int(row[0])


def read_purges(cur: duckdb.DuckDBPyConnection, account: str, limit: int) -> list[dict[str, Any]]:
    rows = cur.execute(
        """SELECT id, key_name, force, purged_at, status, result_json FROM purge_audit
           WHERE account = ? ORDER BY id DESC LIMIT ?""",
        [account, limit],
    ).fetchall()
    return [
        {"id": i, "key_name": k, "force": f, "at": from_db(a), "status": s, "result": json.loads(r)}
        for i, k, f, a, s, r in rows
    ]

"""The mark a store carries once it holds simulated samples, which every report from it repeats.

The mark is one ``store_info`` row per source of simulated data (``simulated:<source>``,
valued with the first time that source wrote). It is written before the data it
describes, so a write that then fails leaves a store over-marked, never under-marked,
and it stays until that source's data is removed (``remove_sample_fleet``).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb

_PREFIX = "simulated:"

# What wrote simulated data; each is one row, so removing one source's data keeps the others'.
SAMPLE_DATA = "the sample fleet's telemetry"
OLDER_DEMO = "the sample fleet's telemetry, written by an older gpufleet's console demo"
CONSOLE_DEMO = "the console's demo nodes"
SIMULATED_SAMPLER = "a server's own sampler of a simulated node (serve --simulate)"
INGEST = "ingest marked simulated (gpufleet agent --simulate)"
SAMPLE_FLEET_SOURCES = (SAMPLE_DATA, OLDER_DEMO, CONSOLE_DEMO, SIMULATED_SAMPLER)


@dataclass(frozen=True, slots=True)
class SimulatedMark:
    """Since when the store holds simulated data, and what wrote it."""

    since: datetime
    sources: tuple[str, ...]


def read_mark(con: duckdb.DuckDBPyConnection) -> SimulatedMark | None:
    rows = con.execute("SELECT key, value FROM store_info WHERE starts_with(key, ?) ORDER BY value",
                       [_PREFIX]).fetchall()
    if not rows:
        return None
    return SimulatedMark(since=datetime.fromisoformat(rows[0][1]),
                         sources=tuple(key.removeprefix(_PREFIX) for key, _ in rows))


def write_mark(con: duckdb.DuckDBPyConnection, source: str, at: datetime) -> SimulatedMark:
    """Record that ``source`` writes simulated data here (its first time stays); returns the mark."""
    con.execute("INSERT INTO store_info VALUES (?, ?) ON CONFLICT DO NOTHING",
                [_PREFIX + source, at.astimezone(UTC).isoformat()])
    mark = read_mark(con)
    assert mark is not None
    return mark


def has_mark_table(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the store already has ``store_info`` (stores from before it are checked once)."""
    return con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'store_info' "
                       "AND schema_name = 'main'").fetchone()[0] > 0


def mark_older_demo(con: duckdb.DuckDBPyConnection, uuids: Collection[str]) -> SimulatedMark | None:
    """Mark a store from before the mark existed that holds the sample fleet's GPUs.

    Before the console's demo had a store of its own, it loaded the sample month
    into the default store: such a store is simulated whatever else it holds.
    """
    row = con.execute("SELECT min(received_at) FROM samples WHERE list_contains(?, gpu_uuid)",
                      [list(uuids)]).fetchone()
    if row is None or row[0] is None:
        return read_mark(con)
    return write_mark(con, OLDER_DEMO, row[0].replace(tzinfo=UTC))


def remove_sample_fleet(con: duckdb.DuckDBPyConnection, uuids: Collection[str],
                        hostnames: Collection[str]) -> tuple[int, int]:
    """Delete the sample fleet's samples, usage and hosts, and their sources' marks.

    Run in one transaction (the writer's). Returns (samples, hosts) removed; marks of
    other sources (ingest marked simulated) stay.
    """
    gpus = [list(uuids)]
    samples = con.execute("DELETE FROM samples WHERE list_contains(?, gpu_uuid)", gpus).fetchone()[0]
    for table in ("gpu_last", "gpu_tail", "usage_daily"):  # gpu_tail: the tails' shares
        con.execute(f"DELETE FROM {table} WHERE list_contains(?, gpu_uuid)", gpus)
    hosts = con.execute("DELETE FROM hosts WHERE list_contains(?, hostname)",
                        [list(hostnames)]).fetchone()[0]
    con.execute("DELETE FROM store_info WHERE list_contains(?, key)",
                [[_PREFIX + source for source in SAMPLE_FLEET_SOURCES]])
    return int(samples), int(hosts)

"""Getting a write group's samples into DuckDB without per-value Python conversion.

Each batch is serialised once with orjson (C speed, GIL held briefly) into a file
on a memory-backed directory, and DuckDB's own JSON reader loads every file of
the group into the ``staging`` temp table in one statement — that work runs
without the GIL, so request parsing goes on meanwhile. The writer also keeps
every GPU's newest stored timestamp (``TailCache``) so a group whose samples are
all new and newer than their GPU's tail — what live agents send — skips the SQL
dedup entirely.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson

from server.store.timeutil import epoch_us, to_db

log = logging.getLogger("gpufleet.store.staging")

# MetricSample fields after `timestamp`, in staging/sample column order, with their SQL types.
FIELD_TYPES: dict[str, str] = {
    "gpu_index": "INTEGER", "gpu_uuid": "VARCHAR", "power_draw_w": "DOUBLE",
    "utilization_gpu_pct": "DOUBLE", "utilization_memory_pct": "DOUBLE", "temperature_c": "DOUBLE",
    "memory_used_mb": "DOUBLE", "gpu_name": "VARCHAR", "power_limit_w": "DOUBLE",
    "energy_delta_j": "DOUBLE", "fan_speed_pct": "DOUBLE", "memory_total_mb": "DOUBLE",
    "sm_clock_mhz": "DOUBLE", "memory_clock_mhz": "DOUBLE", "job_id": "VARCHAR",
    "team_id": "VARCHAR", "model_tag": "VARCHAR", "scheduler_source": "VARCHAR",
    "hostname": "VARCHAR",
}
SAMPLE_FIELDS: tuple[str, ...] = tuple(FIELD_TYPES)

STAGING_DDL = f"""CREATE TEMP TABLE IF NOT EXISTS staging (
    job INTEGER, account VARCHAR, received_at TIMESTAMP, ts TIMESTAMP,
    {", ".join(f"{name} {kind}" for name, kind in FIELD_TYPES.items())}
)"""

_JSON_COLUMNS = "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in
                               {"timestamp": "TIMESTAMPTZ", **FIELD_TYPES}.items()) + "}"
_PACKED_COLUMNS = "{" + ", ".join(
    f"'{name}': '{kind}'" for name, kind in {"timestamp": "TIMESTAMPTZ", **FIELD_TYPES, "_job": "INTEGER",
                                             "_account": "VARCHAR", "_received": "TIMESTAMP"}.items()) + "}"
PACK_BELOW_ROWS = 500
_INT64 = 2**63


STAGING_DIR_ENV = "GPUFLEET_STAGING_DIR"  # where staging folders go (default: MEMORY_DIR)
MEMORY_DIR = "/dev/shm"  # memory-backed on Linux: no disk I/O for a file read once


def staging_bases() -> list[str]:
    """Where a staging folder may go, best first: $GPUFLEET_STAGING_DIR, /dev/shm, the temp dir."""
    configured = os.environ.get(STAGING_DIR_ENV)
    bases = [b for b in (configured, MEMORY_DIR, tempfile.gettempdir()) if b]
    return list(dict.fromkeys(bases))


def make_staging_dir() -> str:
    """A fresh 0700 folder named for this process in the first usable base.

    A base that is missing, not a folder or not writable is skipped (a warning names a
    configured one), so a machine without /dev/shm stages in the temp dir instead.
    """
    configured = os.environ.get(STAGING_DIR_ENV)
    for base in staging_bases():
        if not (os.path.isdir(base) and os.access(base, os.W_OK | os.X_OK)):
            if base == configured:
                log.warning("%s=%s is not a writable folder; staging elsewhere", STAGING_DIR_ENV, base)
            continue
        _remove_orphans(Path(base))
        try:
            return tempfile.mkdtemp(prefix=f"gpufleet-ingest-{os.getpid()}-", dir=base)
        except OSError as exc:
            log.warning("cannot stage ingest files in %s (%s); trying the next place", base, exc)
    # the store's last resort: the temp dir must work or nothing can be staged
    return tempfile.mkdtemp(prefix=f"gpufleet-ingest-{os.getpid()}-")


class JsonStager:
    """Writes a group's batches to files (one per batch) and loads them into ``staging``."""

    def __init__(self) -> None:
        self._dir = make_staging_dir()
        self._paths: list[str] = []

    @property
    def folder(self) -> str:
        """The folder this stager writes its files in."""
        return self._dir

    def stage(self, con: duckdb.DuckDBPyConnection, batches: Sequence[tuple[str, datetime, Sequence[dict[str, Any]]]]
              ) -> None:
        """Load every (account, received_at, samples) batch into ``staging``, job = its position."""
        con.execute("INSERT INTO staging " + self.source(batches))

    def source(self, batches: Sequence[tuple[str, datetime, Sequence[dict[str, Any]]]]
               ) -> str:
        """Write the group's files; return a SELECT of their rows (columns as ``staging``).

        A big batch gets a file of its own (the file names its job); small ones share one
        file, each row a copy tagged with its job, account and receive time (DuckDB pays
        ~0.7 ms per file and more for the join that names a file's job; the copy costs
        ~0.3 µs per row). The SELECT has no parameters, so it can go in a multi-statement
        script, and may be run more than once until the next call.
        """
        big: list[int] = []
        packed: list[dict[str, Any]] = []
        for job, (account, received, samples) in enumerate(batches):
            if len(samples) >= PACK_BELOW_ROWS:
                big.append(job)
            else:
                tags = {"_job": job, "_account": account, "_received": to_db(received)}
                packed.extend([{**sample, **tags} for sample in samples])
        bodies = [_dumps(batches[job][2]) for job in big] + ([_dumps(packed)] if packed else [])
        while len(self._paths) < len(bodies):
            self._paths.append(os.path.join(self._dir, f"batch-{len(self._paths)}.json"))
        paths = self._paths[:len(bodies)]
        os.makedirs(self._dir, mode=0o700, exist_ok=True)  # a tmp cleaner may have removed it
        for path, body in zip(paths, bodies, strict=True):
            with open(path, "wb") as out:
                out.write(body)
        fields = ", ".join("r." + f for f in SAMPLE_FIELDS)
        parts: list[str] = []
        if big:  # our own paths (no quotes inside); every value inlined as a SQL literal
            files = ", ".join(f"'{p}'" for p in paths[:len(big)])
            tags = ", ".join(f"('{path}', {job}, {sql_text(batches[job][0])}, {_sql_time(batches[job][1])})"
                             for path, job in zip(paths, big, strict=False))
            parts.append(
                f"""SELECT j.job AS job, j.account AS account, j.received_at AS received_at,
                           r.timestamp::TIMESTAMP AS ts, {fields}
                    FROM read_json([{files}], format = 'array', columns = {_JSON_COLUMNS},
                                   filename = true) r
                    JOIN (VALUES {tags}) j(filename, job, account, received_at) USING (filename)""")
        if packed:
            parts.append(
                f"""SELECT r._job AS job, r._account AS account, r._received AS received_at,
                           r.timestamp::TIMESTAMP AS ts, {fields}
                    FROM read_json('{paths[-1]}', format = 'array', columns = {_PACKED_COLUMNS}) r""")
        return " UNION ALL ".join(parts)

    def close(self) -> None:
        for path in self._paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(self._dir)


def sql_text(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def _sql_time(value: datetime) -> str:
    return f"TIMESTAMP '{to_db(value).isoformat(sep=' ')}'"


def _remove_orphans(base: Path) -> None:
    """Remove staging folders of writers that died without closing (SIGKILL, power loss)."""
    for folder in base.glob("gpufleet-ingest-*-*"):
        pid = folder.name.split("-")[2]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _dumps(samples: Sequence[dict[str, Any]]) -> bytes:
    try:
        return orjson.dumps(samples)
    except orjson.JSONEncodeError:
        # Only a Python caller or the stdlib parser yields these: an integer beyond 64 bits
        # (every column it can sit in is DOUBLE, so store it as one) or a string with a
        # lone surrogate escape (not encodable as UTF-8; stored with '?' in its place).
        return orjson.dumps([{k: _encodable(v) for k, v in s.items()} for s in samples])


def _encodable(value: Any) -> Any:
    if type(value) is int and abs(value) >= _INT64:
        return float(value)
    if type(value) is str:
        return value.encode("utf-8", "replace").decode("utf-8")
    return value


def timestamps_us(samples: Sequence[dict[str, Any]]) -> list[int]:
    """Every sample's timestamp as integer µs since the epoch (naive values are UTC)."""
    raw = [s["timestamp"] for s in samples]
    return [us[t] for us in [{t: _to_us(t) for t in set(raw)}] for t in raw]


def _to_us(value: Any) -> int:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return epoch_us(value)


Key = tuple[str, str]
Range = tuple[int, int, int]  # a GPU's lowest and highest timestamp (µs) in a group, and its count
SampleKeys = tuple[Sequence[str], Sequence[int]]  # every sample's gpu_uuid and timestamp (µs)


class TailCache:
    """Every GPU's newest stored timestamp (µs), mirrored from the store by the writer thread."""

    def __init__(self, pending: Callable[[], Mapping[Key, Range]] = dict) -> None:
        self._tail: dict[Key, int] | None = None
        self._pending = pending  # the writer's samples not folded in yet (not in gpu_last)

    def invalidate(self) -> None:
        """Something other than a sample group wrote samples: reload before the next check."""
        self._tail = None

    def load(self, con: duckdb.DuckDBPyConnection) -> dict[Key, int]:
        if self._tail is None:
            rows = con.execute("SELECT account, gpu_uuid, epoch_us(ts) FROM gpu_last").fetchall()
            tail = {(a, u): int(t) for a, u, t in rows}
            for key, (_low, high, _count) in self._pending().items():
                if high > tail.get(key, high - 1):
                    tail[key] = high
            self._tail = tail
        return self._tail

    def newest_if_fresh(self, con: duckdb.DuckDBPyConnection,
                        batches: Iterable[tuple[str, Sequence[dict[str, Any]], SampleKeys | None]]
                        ) -> dict[Key, Range] | None:
        """Each GPU's lowest and newest timestamp and sample count in the group, if every
        sample is new and newer than its GPU's stored tail (and than the group's earlier
        batches); None otherwise."""
        tail = self.load(con)
        ranges: dict[Key, Range] = {}
        for account, samples, keys in batches:
            if keys is None:
                keys = ([s["gpu_uuid"] for s in samples], timestamps_us(samples))
            uuids, stamps = keys
            if len(set(zip(uuids, stamps, strict=True))) != len(stamps):
                return None  # the same (gpu, timestamp) twice in one batch
            low: dict[str, int] = {}
            high: dict[str, int] = {}
            count: dict[str, int] = {}
            for uuid, ts in zip(uuids, stamps, strict=True):
                if ts < low.get(uuid, ts + 1):
                    low[uuid] = ts
                if ts > high.get(uuid, ts - 1):
                    high[uuid] = ts
                count[uuid] = count.get(uuid, 0) + 1
            for uuid, ts in low.items():
                key = (account, uuid)
                earlier = ranges.get(key)
                seen = earlier[1] if earlier is not None else tail.get(key)
                if seen is not None and ts <= seen:
                    return None
                ranges[key] = (earlier[0] if earlier is not None else ts, high[uuid],
                               count[uuid] + (earlier[2] if earlier is not None else 0))
        return ranges

    def advance(self, ranges: dict[Key, Range]) -> None:
        """After COMMIT: the group's newest timestamps become the tails they exceed."""
        if self._tail is None:
            return
        tail = self._tail
        for key, (_low, ts, _count) in ranges.items():
            if ts > tail.get(key, ts - 1):
                tail[key] = ts

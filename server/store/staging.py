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
import itertools
import logging
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson

from gpufleet.server.store import shares
from gpufleet.server.store.timeutil import epoch_us, to_db

log = logging.getLogger("gpufleet.store.staging")

# MetricSample fields after `timestamp`, in staging/sample column order, with their SQL types.
FIELD_TYPES: dict[str, str] = {
    "gpu_index": "INTEGER", "gpu_uuid": "VARCHAR", "power_draw_w": "DOUBLE",
    "utilization_gpu_pct": "DOUBLE", "utilization_memory_pct": "DOUBLE", "temperature_c": "DOUBLE",
    "memory_used_mb": "DOUBLE", "gpu_name": "VARCHAR", "power_limit_w": "DOUBLE",
    "energy_delta_j": "DOUBLE", "fan_speed_pct": "DOUBLE", "memory_total_mb": "DOUBLE",
    "sm_clock_mhz": "DOUBLE", "memory_clock_mhz": "DOUBLE", "job_id": "VARCHAR",
    "team_id": "VARCHAR", "model_tag": "VARCHAR", "scheduler_source": "VARCHAR",
    "hostname": "VARCHAR", "gpu_fraction": "DOUBLE", "gpu_fraction_basis": "VARCHAR",
}
SAMPLE_FIELDS: tuple[str, ...] = tuple(FIELD_TYPES)

STAGING_DDL = f"""CREATE TEMP TABLE IF NOT EXISTS staging (
    job BIGINT, account VARCHAR, received_at TIMESTAMP, ts TIMESTAMP,
    {", ".join(f"{name} {kind}" for name, kind in FIELD_TYPES.items())}
)"""

_JSON_COLUMNS = "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in
                               {"timestamp": "TIMESTAMPTZ", **FIELD_TYPES}.items()) + "}"
_PACKED_COLUMNS = "{" + ", ".join(
    f"'{name}': '{kind}'" for name, kind in {"timestamp": "TIMESTAMPTZ", **FIELD_TYPES, "_job": "BIGINT",
                                             "_account": "VARCHAR", "_received": "TIMESTAMP"}.items()) + "}"
PACK_BELOW_ROWS = 500
_INT64 = 2**63


Key = tuple[str, str]
Range = tuple[int, int, int]  # a GPU's lowest and highest timestamp (µs) in a group, and its count
# every sample's gpu_uuid and timestamp (µs), and optionally its gpu_fraction (a third
# item of None: no sample has one)
SampleKeys = tuple[Sequence[str], Sequence[int]] | tuple[Sequence[str], Sequence[int], Sequence[Any] | None]


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


@dataclass
class StagedBatch:
    """One submitted batch, made ready for the writer on the submitting thread.

    The JSON serialisation, the file write and the per-GPU summary happen where the
    batch is submitted (the event loop, which holds the GIL anyway), so the writer
    thread spends its time in DuckDB: every time it needs the GIL back from a busy
    event loop it can wait up to a switch interval (5 ms), and a group used to need it
    twice per batch.
    """

    job: int  # unique per stager: the batch's tag in ``staging.job``
    account: str
    received_at: datetime
    count: int  # samples submitted, repeats of a workload within the batch included
    ranges: dict[str, Range] | None  # per gpu_uuid, over the samples staged
    staged: int = -1  # samples staged: the first of each workload (-1: all of them)
    # GPUs with a shared time (several workloads' rows) or a gpu_fraction in this batch:
    # their rollup upkeep takes the grouping SQL (see pending.fold)
    shared_gpus: frozenset[str] = frozenset()
    path: str | None = None  # a big batch's own file
    packed: bytes | None = None  # a small batch's rows, tagged, as a JSON array


class JsonStager:
    """Stages batches as JSON files and gives the SELECT that reads a group of them."""

    def __init__(self) -> None:
        self._dir = make_staging_dir()
        self._jobs = itertools.count(1)
        self._lock = threading.Lock()  # batches are prepared on several threads

    @property
    def folder(self) -> str:
        """The folder this stager writes its files in."""
        return self._dir

    def prepare(self, account: str, received_at: datetime, samples: Sequence[dict[str, Any]],
                keys: SampleKeys | None = None) -> StagedBatch:
        """Summarise and serialise one batch (thread-safe; call it where the batch is submitted).

        A big batch gets a file of its own (the group's SELECT names its job by file);
        small ones are kept as bytes, each row a copy tagged with its job, account and
        receive time, and share one file per group (DuckDB pays ~0.7 ms per file and more
        to name each file's job; the copy costs ~0.3 µs per row).
        """
        job = next(self._jobs)
        if keys is None:
            keys = ([s["gpu_uuid"] for s in samples], timestamps_us(samples))
        uuids, stamps = keys[0], keys[1]
        fractions = keys[2] if len(keys) > 2 else [s.get("gpu_fraction") for s in samples]
        count = len(samples)
        keep = None
        if len(set(zip(uuids, stamps, strict=True))) != count:
            # the same GPU and time twice: a shared GPU's workloads, or a repeat (kept once)
            keep = shares.first_of_each_workload(samples, uuids, stamps)
        shared: set[str] = set()
        if fractions is not None and fractions.count(None) != count:
            shares.check_batch(uuids, stamps, fractions, keep)
            shared.update(u for u, f in zip(uuids, fractions, strict=True) if f is not None)
        if keep is not None:
            if len(keep) != count:
                samples = [samples[i] for i in keep]
                uuids, stamps = [uuids[i] for i in keep], [stamps[i] for i in keep]
            seen: set[tuple[str, int]] = set()
            for key in zip(uuids, stamps, strict=True):
                if key in seen:
                    shared.add(key[0])
                seen.add(key)
        batch = StagedBatch(job, account, received_at, count, batch_ranges(uuids, stamps),
                            staged=len(samples), shared_gpus=frozenset(shared))
        if len(samples) >= PACK_BELOW_ROWS:
            batch.path = self._write(f"batch-{job}.json", _dumps(samples))
        else:
            tags = {"_job": job, "_account": account, "_received": to_db(received_at)}
            batch.packed = _dumps([{**sample, **tags} for sample in samples])
        return batch

    def release(self, batch: StagedBatch) -> None:
        """The batch is written (or failed): remove its file."""
        if batch.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(batch.path)

    def stage(self, con: duckdb.DuckDBPyConnection, batches: Sequence[StagedBatch]) -> None:
        """Load every batch of the group into ``staging``."""
        con.execute("INSERT INTO staging " + self.source(batches))

    def source(self, batches: Sequence[StagedBatch]) -> str:
        """A SELECT of the group's rows (columns as ``staging``, job = each batch's ``job``).

        Small batches' rows are written to the group's one shared file here. The SELECT
        has no parameters, so it can go in a multi-statement script, and may be run more
        than once until the next call.
        """
        big = [b for b in batches if b.path is not None]
        packed = [b.packed[1:-1] for b in batches if b.packed is not None and len(b.packed) > 2]
        if packed:
            packed_path = self._write("packed.json", b"[" + b",".join(packed) + b"]")
        fields = ", ".join("r." + f for f in SAMPLE_FIELDS)
        parts: list[str] = []
        if big:  # our own paths (no quotes inside); every value inlined as a SQL literal
            parts.append(_big_batches_select(big, fields))
        if packed:
            parts.append(
                f"""SELECT r._job AS job, r._account AS account, r._received AS received_at,
                           r.timestamp::TIMESTAMP AS ts, {fields}
                    FROM read_json('{packed_path}', format = 'array', columns = {_PACKED_COLUMNS}) r""")
        if not parts:  # every batch empty: nothing to read
            return "SELECT * FROM staging WHERE false"
        return " UNION ALL ".join(parts)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self._dir, "packed.json"))
        with contextlib.suppress(OSError):
            os.rmdir(self._dir)

    def _write(self, name: str, body: bytes) -> str:
        """Write ``body`` as ``name`` in the staging folder; returns its path.

        If a tmp cleaner removed the folder, a fresh one is made under a new name: in a
        shared place like /dev/shm someone else may have taken the old one meanwhile, so
        the folder is checked to be ours (a stat, ~1 µs) before every write.
        """
        with self._lock:
            if not _private_dir(self._dir):
                self._dir = make_staging_dir()
            path = os.path.join(self._dir, name)
        with open(path, "wb") as out:
            out.write(body)
        return path


def _big_batches_select(big: Sequence[StagedBatch], fields: str) -> str:
    """The rows of batches with files of their own, tagged with each batch's job, account
    and receive time (one file: constants; more: a CASE on the file name, which costs
    DuckDB ~30 % less than joining a VALUES list on it)."""
    if len(big) == 1:
        b = big[0]
        job, account, received = str(b.job), sql_text(b.account), _sql_time(b.received_at)
        source = f"read_json('{b.path}', format = 'array', columns = {_JSON_COLUMNS})"
    else:
        def case(value: Callable[[StagedBatch], str]) -> str:
            return "CASE r.filename " + " ".join(f"WHEN '{b.path}' THEN {value(b)}" for b in big) + " END"

        job = case(lambda b: str(b.job))
        account = case(lambda b: sql_text(b.account))
        received = case(lambda b: _sql_time(b.received_at))
        files = ", ".join(f"'{b.path}'" for b in big)
        source = f"read_json([{files}], format = 'array', columns = {_JSON_COLUMNS}, filename = true)"
    return f"""SELECT {job} AS job, {account} AS account, {received} AS received_at,
                      r.timestamp::TIMESTAMP AS ts, {fields}
               FROM {source} r"""


def batch_ranges(uuids: Sequence[str], stamps: Sequence[int]) -> dict[str, Range]:
    """Each GPU's lowest and highest timestamp and sample count (a shared GPU's workloads
    at one time are several samples)."""
    low: dict[str, int] = {}
    high: dict[str, int] = {}
    count: dict[str, int] = {}
    for uuid, ts in zip(uuids, stamps, strict=True):
        if ts < low.get(uuid, ts + 1):
            low[uuid] = ts
        if ts > high.get(uuid, ts - 1):
            high[uuid] = ts
        count[uuid] = count.get(uuid, 0) + 1
    return {uuid: (low[uuid], high[uuid], count[uuid]) for uuid in low}


def sql_text(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def _sql_time(value: datetime) -> str:
    return f"TIMESTAMP '{to_db(value).isoformat(sep=' ')}'"


def _private_dir(path: str) -> bool:
    """A real folder (not a link) of this user that nobody else may enter."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and info.st_mode & 0o077 == 0


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


_STAGED_KEYS = ("timestamp", *SAMPLE_FIELDS, "_job", "_account", "_received")


def _dumps(samples: Sequence[dict[str, Any]]) -> bytes:
    try:
        return orjson.dumps(samples)
    except orjson.JSONEncodeError:
        # Only a Python caller or the stdlib parser yields these: an integer beyond 64 bits
        # (every column it can sit in is DOUBLE, so store it as one), a string with a lone
        # surrogate (validation refuses them in stored fields; elsewhere stored with '?'),
        # or an unknown field nested past orjson's limit. Only the stored fields are kept.
        return orjson.dumps([{k: _encodable(s[k]) for k in _STAGED_KEYS if k in s}
                             for s in samples])


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
                        batches: Iterable[tuple[str, Mapping[str, Range] | None]]) -> dict[Key, Range] | None:
        """Each GPU's lowest and newest timestamp and sample count in the group, given every
        (account, ``batch_ranges``) of it, if every sample is new and newer than its GPU's
        stored tail (and than the group's earlier batches); None otherwise."""
        tail = self.load(con)
        ranges: dict[Key, Range] = {}
        for account, per_gpu in batches:
            if per_gpu is None:
                return None  # the same (gpu, timestamp) twice in one batch
            for uuid, (low, high, count) in per_gpu.items():
                key = (account, uuid)
                earlier = ranges.get(key)
                seen = earlier[1] if earlier is not None else tail.get(key)
                if seen is not None and low <= seen:
                    return None
                ranges[key] = (low, high, count) if earlier is None else (earlier[0], high, earlier[2] + count)
        return ranges

    def advance(self, ranges: dict[Key, Range]) -> None:
        """After COMMIT: the group's newest timestamps become the tails they exceed."""
        if self._tail is None:
            return
        tail = self._tail
        for key, (_low, ts, _count) in ranges.items():
            if ts > tail.get(key, ts - 1):
                tail[key] = ts

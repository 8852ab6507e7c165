"""Parquet export's SQL: what each (account, day) holds, and DuckDB's COPY of one day.

Whole rows are exported by name (``SELECT * EXCLUDE``), so a column a later schema
adds flows into the files without a change here. Timestamps are written as UTC
instants (Parquet ``isAdjustedToUTC``), so every engine reads the same time; the
partition columns (``account``, ``day``) live in the folder names, hive style.

A sample is new to an export when its ``received_at`` is after the newest one
already exported for its (account, day): every sample is stored once, stamped when
it arrived, so that mark finds late samples for a day exported before too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpufleet.server.store import MetricsStore

_EPOCH = datetime(1970, 1, 1)


@dataclass(frozen=True, slots=True)
class DayState:
    """What one (account, day) holds now: its samples' newest arrival, its rollup's fingerprint."""

    account: str
    day: date
    samples: int
    received_max_us: int | None  # newest received_at of its samples, µs since the epoch (UTC)
    usage_rows: int
    usage_fingerprint: str | None  # changes whenever any usage_daily row of that day changes

    def to_json(self) -> dict[str, Any]:
        return {"account": self.account, "day": self.day.isoformat(), "samples": self.samples,
                "received_max_us": self.received_max_us, "usage_rows": self.usage_rows,
                "usage_fingerprint": self.usage_fingerprint}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DayState:
        return cls(account=str(data["account"]), day=date.fromisoformat(data["day"]),
                   samples=int(data["samples"]), received_max_us=data.get("received_max_us"),
                   usage_rows=int(data["usage_rows"]),
                   usage_fingerprint=data.get("usage_fingerprint"))


_DAYS = """
    WITH s AS (
        SELECT account, CAST(ts AS DATE) AS day, count(*) AS n, epoch_us(max(received_at)) AS hi
        FROM samples
        WHERE ($account IS NULL OR account = $account)
          AND ts >= CAST($first AS TIMESTAMP) AND ts < CAST($last AS TIMESTAMP) + INTERVAL 1 DAY
        GROUP BY ALL
    ), u AS (
        SELECT account, day, count(*) AS n, bit_xor(hash(usage_daily)) AS fp
        FROM usage_daily
        WHERE ($account IS NULL OR account = $account) AND day BETWEEN $first AND $last
        GROUP BY ALL
    )
    SELECT coalesce(s.account, u.account), coalesce(s.day, u.day), coalesce(s.n, 0), s.hi,
           coalesce(u.n, 0), u.fp
    FROM s FULL OUTER JOIN u ON s.account = u.account AND s.day = u.day
    ORDER BY 1, 2
"""
_BOUNDS = "SELECT CAST(min(ts) AS DATE), CAST(max(ts) AS DATE) FROM samples"
# received_at <= $upto: rows that arrived after the caller's cutoff wait for the next run
_SAMPLES = """
    COPY (
        SELECT * EXCLUDE (account)
                 REPLACE (timezone('UTC', ts) AS ts, timezone('UTC', received_at) AS received_at)
        FROM samples
        WHERE account = $account
          AND ts >= CAST($day AS TIMESTAMP) AND ts < CAST($day AS TIMESTAMP) + INTERVAL 1 DAY
          AND received_at > make_timestamp($after) AND received_at <= make_timestamp($upto)
        ORDER BY ts, gpu_uuid
    ) TO '{path}' (FORMAT parquet, COMPRESSION zstd)
"""
_SAMPLES_UPTO = """
    SELECT count(*), epoch_us(max(received_at)) FROM samples
    WHERE account = $account
      AND ts >= CAST($day AS TIMESTAMP) AND ts < CAST($day AS TIMESTAMP) + INTERVAL 1 DAY
      AND received_at > make_timestamp($after) AND received_at <= make_timestamp($upto)
"""
_USAGE = """
    COPY (
        SELECT * EXCLUDE (account, day) FROM usage_daily
        WHERE account = $account AND day = $day
        ORDER BY ALL
    ) TO '{path}' (FORMAT parquet, COMPRESSION zstd)
"""
_USAGE_COUNT = "SELECT count(*) FROM usage_daily WHERE account = $account AND day = $day"
NO_MARK_US = -(2**62)  # "nothing exported yet": before any received_at
MAX_US = 2**62


def _path_literal(path: Path) -> str:
    # COPY's target cannot be a parameter; the caller's own temp file name, quotes doubled
    return str(path).replace("'", "''")


class StoreExport:
    """The export reads of one open store, on its own read cursors (the writer keeps writing)."""

    def __init__(self, store: MetricsStore) -> None:
        self._store = store

    def bounds(self) -> tuple[date, date] | None:
        """The first and last day (UTC) any sample covers, or None for an empty store."""
        with self._store._cursor() as cur:
            first, last = cur.execute(_BOUNDS).fetchone()
        return None if first is None else (first, last)

    def barrier(self) -> None:
        """Return once every write queued before this call is committed and folded."""
        self._store.writer.call(lambda _con: None, transaction=False)

    def days(self, account: str | None, first: date, last: date) -> list[DayState]:
        with self._store._cursor() as cur:
            rows = cur.execute(_DAYS, {"account": account, "first": first, "last": last}).fetchall()
        return [DayState(account=a, day=d, samples=int(n), received_max_us=hi, usage_rows=int(un),
                         usage_fingerprint=None if fp is None else f"{fp:016x}")
                for a, d, n, hi, un, fp in rows]

    def copy_samples(self, path: Path, account: str, day: date, after_us: int,
                     upto_us: int = MAX_US) -> tuple[int, int | None]:
        """Write the day's samples that arrived in (after_us, upto_us] to ``path``.

        Returns (rows, newest received_at in µs); no file is written when there are none.
        Both statements run in one transaction: the file holds exactly what was counted.
        """
        params = {"account": account, "day": day, "after": after_us, "upto": upto_us}
        with self._store._cursor() as cur:
            cur.begin()
            try:
                count, newest = cur.execute(_SAMPLES_UPTO, params).fetchone()
                if count:
                    cur.execute(_SAMPLES.format(path=_path_literal(path)), params)
            finally:
                cur.rollback()
        return int(count), newest

    def copy_usage(self, path: Path, account: str, day: date) -> int:
        """Write the day's usage rollup rows to ``path`` (a file even when there are none); their count."""
        params = {"account": account, "day": day}
        with self._store._cursor() as cur:
            cur.begin()
            try:
                count = cur.execute(_USAGE_COUNT, params).fetchone()[0]
                cur.execute(_USAGE.format(path=_path_literal(path)), params)
            finally:
                cur.rollback()
        return int(count)


def utc_us(moment: datetime) -> int:
    """A UTC datetime as µs since the epoch, as the store's marks are kept."""
    naive = moment.astimezone(UTC).replace(tzinfo=None)
    delta = naive - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds

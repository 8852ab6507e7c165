"""``gpufleet export``'s engine: a store's samples and usage rollup into a hive-partitioned Parquet folder.

Layout (``account`` percent-encoded, days in UTC)::

    DIR/samples/account=default/day=2026-11-01/received-<µs>.parquet   append-only
    DIR/usage_daily/account=default/day=2026-11-01/usage.parquet       replaced when it changes
    DIR/_gpufleet_export.json                                          usage fingerprints

Incremental: a samples file is named after the newest ``received_at`` it holds, so the
folder itself says what each day already has; a run asks only for the samples that
arrived after that, which includes late samples for days exported before (they land
as one more file in that day's folder). A day's usage rollup changes as samples
arrive, so its one file is replaced (atomically) whenever its fingerprint changed.
Every file is written beside its place under ``.tmp/`` and renamed in, so a crash or
a full disk leaves no half file, and a rerun goes on where it stopped. Memory is
bounded by one day's file, whatever the store's size.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from gpufleet.server.store.export import NO_MARK_US, DayState

SAMPLES = "samples"
USAGE = "usage_daily"
STATE_FILE = "_gpufleet_export.json"
TMP_DIR = ".tmp"
LOCK_FILE = ".lock"
_SAMPLE_PREFIX = "received-"
_STATE_EVERY_DAYS = 100  # usage fingerprints are saved this often (a crash redoes at most these)


class ExportError(Exception):
    """The export cannot go on; the message says why (no traceback for the user)."""


class ExportSource(Protocol):
    """Where the rows come from: the store itself, its server's admin channel, or the HTTP API."""

    def days(self, first: date | None, last: date | None) -> list[DayState]: ...

    def samples(self, dest: Path, account: str, day: date, after_us: int) -> tuple[int, int | None]:
        """Write the day's samples that arrived after ``after_us`` to ``dest``: (rows, newest µs)."""
        ...

    def usage(self, dest: Path, account: str, day: date) -> None: ...


@dataclass
class ExportResult:
    days: int = 0  # (account, day) partitions looked at
    sample_files: int = 0
    samples: int = 0
    usage_files: int = 0
    simulated: bool = False  # the source holds simulated data (a demo or --simulate store)

    def summary(self, root: Path) -> str:
        text = (f"exported {self.samples:,} new samples in {self.sample_files:,} files and "
                f"{self.usage_files:,} changed usage days, of {self.days:,} days, to {root}")
        if self.simulated:
            text += " (SIMULATED data: not billable; recorded in " + STATE_FILE + ")"
        return text


def partition(root: Path, table: str, account: str, day: date) -> Path:
    return root / table / f"account={quote(account, safe='')}" / f"day={day.isoformat()}"


def sample_mark(folder: Path) -> int:
    """The newest ``received_at`` (µs) a day's folder already holds, from its files' names."""
    mark = NO_MARK_US
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            name = entry.name
            if name.startswith(_SAMPLE_PREFIX) and name.endswith(".parquet"):
                with contextlib.suppress(ValueError):
                    mark = max(mark, int(name[len(_SAMPLE_PREFIX):-len(".parquet")]))
    return mark


class ParquetFolder:
    """The destination: one exporter at a time (a lock file), files renamed in whole."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / TMP_DIR
        self._state_path = root / STATE_FILE
        self.fingerprints: dict[str, str] = {}
        self.simulated = False  # some export into this folder came from simulated data

    @contextlib.contextmanager
    def locked(self) -> Iterator[ParquetFolder]:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock = open(self.root / LOCK_FILE, "a")  # noqa: SIM115 - held for the whole run
        except OSError as exc:
            raise ExportError(f"cannot use {self.root}: {exc.strerror or exc}") from None
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ExportError(f"{self.root} is being written by another gpufleet export") from None
            shutil.rmtree(self.tmp, ignore_errors=True)  # a crashed run's leftovers
            self.tmp.mkdir()
            self._load_state()
            yield self
            self.save_state()
            shutil.rmtree(self.tmp, ignore_errors=True)
        finally:
            lock.close()

    def _load_state(self) -> None:
        try:
            data = json.loads(self._state_path.read_text())
            self.fingerprints = {str(k): str(v) for k, v in data.get("usage_fingerprints", {}).items()}
            self.simulated = bool(data.get("simulated"))
        except FileNotFoundError:
            self.fingerprints = {}
        except (OSError, ValueError, AttributeError) as exc:
            raise ExportError(f"{self._state_path}: unreadable ({exc}); remove it and every "
                              f"usage day is written again") from None

    def save_state(self) -> None:
        tmp = self.tmp / f"state-{uuid.uuid4().hex}.json"
        tmp.write_text(json.dumps({"format": 1, "simulated": self.simulated,
                                   "usage_fingerprints": self.fingerprints},
                                  indent=0, sort_keys=True))
        os.replace(tmp, self._state_path)

    def scratch(self) -> Path:
        return self.tmp / f"{uuid.uuid4().hex}.parquet"

    def put(self, scratch: Path, final: Path) -> None:
        """Move a finished file into its place (made durable first)."""
        with open(scratch, "rb") as handle:
            os.fsync(handle.fileno())
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(scratch, final)


def _key(state: DayState) -> str:
    return f"{state.account}\t{state.day.isoformat()}"


def export(source: ExportSource, root: Path, *, first: date | None = None,
           last: date | None = None,
           progress: Callable[[ExportResult], None] | None = None) -> ExportResult:
    """Bring ``root`` up to date with ``source`` for the days in [first, last] (all by default)."""
    result = ExportResult()
    with ParquetFolder(root).locked() as folder:
        days = source.days(first, last)
        result.simulated = bool(getattr(source, "simulated", False))
        folder.simulated = folder.simulated or result.simulated
        for number, state in enumerate(days, start=1):
            result.days += 1
            if state.samples:
                _export_samples(source, folder, state, result)
            if state.usage_rows and folder.fingerprints.get(_key(state)) != state.usage_fingerprint:
                scratch = folder.scratch()
                source.usage(scratch, state.account, state.day)
                folder.put(scratch, partition(root, USAGE, state.account, state.day) / "usage.parquet")
                folder.fingerprints[_key(state)] = state.usage_fingerprint or ""
                result.usage_files += 1
            if number % _STATE_EVERY_DAYS == 0:
                folder.save_state()
                if progress is not None:
                    progress(result)
    return result


def _export_samples(source: ExportSource, folder: ParquetFolder, state: DayState,
                    result: ExportResult) -> None:
    target = partition(folder.root, SAMPLES, state.account, state.day)
    mark = sample_mark(target)
    if state.received_max_us is not None and state.received_max_us <= mark:
        return  # nothing arrived for that day since the last run
    scratch = folder.scratch()
    rows, newest = source.samples(scratch, state.account, state.day, mark)
    if not rows or newest is None:
        with contextlib.suppress(FileNotFoundError):
            scratch.unlink()
        return
    folder.put(scratch, target / f"{_SAMPLE_PREFIX}{newest}.parquet")
    result.sample_files += 1
    result.samples += rows


"""A bounded write-ahead spool of ingest batches on disk that a crash or power loss cannot corrupt.

Theory: each batch body is one record appended to a segment file
(``seg-<seq>.log``) as a 16-byte header (magic, length, sample count, CRC32 of
all three and the payload) plus the exact JSON bytes posted later, then fsynced.
A record cut short by a crash fails its length or CRC check and is skipped.
Delivery reads from the acknowledged position (``ack``: "<seq> <offset>",
replaced atomically by rename + fsync) and pins the extent of the batch it is
sending (``inflight``), so a retry, even after a restart, posts the same bytes.
Segments wholly before the acknowledged position are deleted; past
``max_bytes`` the oldest segment is dropped, its records counted and logged.
A lock file keeps a second agent off the same directory.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import takewhile
from pathlib import Path

log = logging.getLogger("gpufleet.agent")

MAGIC = b"GF"
_HEADER = struct.Struct("<2s2xIII")  # magic, pad, payload length, sample count, crc32
_SEGMENT_PREFIX, _SEGMENT_SUFFIX = "seg-", ".log"
Position = tuple[int, int]  # (segment seq, byte offset)


class SpoolLocked(Exception):
    """Another agent holds this spool directory."""


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    start: Position
    end: Position
    count: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Batch:
    """Consecutive records joined into one ingest body (one JSON array)."""

    start: Position
    end: Position
    records: int
    count: int
    body: bytes


@dataclass(slots=True)
class SpoolStats:
    appended: int = 0
    pending_records: int = 0
    pending_samples: int = 0
    dropped_records: int = 0
    dropped_samples: int = 0
    skipped_records: int = 0  # torn or corrupt, found while reading


def _crc(length: int, count: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<II", length, count)))


def encode_record(body: bytes, count: int) -> bytes:
    return _HEADER.pack(MAGIC, len(body), count, _crc(len(body), count, body)) + body


def join_bodies(bodies: list[bytes]) -> bytes:
    """JSON arrays ``[a,b]`` and ``[c]`` joined into ``[a,b,c]`` without parsing them."""
    if len(bodies) == 1:
        return bodies[0]
    inner = [b.strip()[1:-1].strip() for b in bodies]
    return b"[" + b",".join(part for part in inner if part) + b"]"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so a crash leaves the old or the new file, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _read_records(path: Path, seq: int, offset: int,
                  skip: Callable[[int, int, str], None]) -> Iterator[SpoolRecord]:
    """The intact records of segment ``path`` from ``offset``; ``skip`` hears of each bad one."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return
    pos = 0
    while pos < len(data):
        header = data[pos : pos + _HEADER.size]
        if len(header) < _HEADER.size:
            skip(seq, offset + pos, "torn record header")
            return
        magic, length, count, crc = _HEADER.unpack(header)
        body_end = pos + _HEADER.size + length
        if magic != MAGIC:
            skip(seq, offset + pos, "bad record marker; rest of segment skipped")
            return
        if body_end > len(data):
            skip(seq, offset + pos, "torn last record")
            return
        body = data[pos + _HEADER.size : body_end]
        if _crc(length, count, body) != crc:
            skip(seq, offset + pos, "CRC mismatch")
        else:
            yield SpoolRecord((seq, offset + pos), (seq, offset + body_end), count, body)
        pos = body_end


def pending_records(directory: Path) -> list[SpoolRecord]:
    """The records a spool directory holds that no server acknowledged, oldest first, read
    without locking it.

    For naming spools this run does not deliver (another destination may be in use by
    another agent right now): a reading, never a change.
    """
    try:
        seq, offset = (int(v) for v in (directory / "ack").read_text().split())
    except (OSError, ValueError):
        seq, offset = 0, 0
    numbered = []
    for path in directory.glob(f"{_SEGMENT_PREFIX}*{_SEGMENT_SUFFIX}"):
        try:
            numbered.append((int(path.name[len(_SEGMENT_PREFIX) : -len(_SEGMENT_SUFFIX)]), path))
        except ValueError:
            continue
    records: list[SpoolRecord] = []
    for number, path in sorted(numbered):
        if number >= seq:
            start = offset if number == seq else 0
            records += _read_records(path, number, start, lambda *_: None)
    return records


def pending_samples(directory: Path) -> int:
    """Samples a spool directory holds that no server acknowledged (``pending_records``)."""
    return sum(r.count for r in pending_records(directory))


class Spool:
    """Append batches, read them back oldest first, acknowledge what the server stored."""

    def __init__(self, directory: Path, *, max_bytes: int, segment_bytes: int | None = None) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or max(4096, max_bytes // 16)
        self.stats = SpoolStats()
        self._skipped_at: set[Position] = set()  # each bad record is counted and logged once
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SpoolLocked(f"another agent is using the spool directory {directory}") from None
        self._sizes: dict[int, int] = {
            int(p.name[len(_SEGMENT_PREFIX) : -len(_SEGMENT_SUFFIX)]): p.stat().st_size
            for p in directory.glob(f"{_SEGMENT_PREFIX}*{_SEGMENT_SUFFIX}")
        }
        self._ack = self._read_position("ack") or (0, 0)
        self._pin = self._read_position("inflight")
        # Appends always go to a fresh segment numbered above every segment and every saved
        # position: an old one may end in a torn record, and a reused number would put new
        # records behind an acknowledged offset (read from the wrong place, then deleted).
        floor = max(max(self._sizes, default=0), self._ack[0], self._pin[0] if self._pin else 0)
        self._next_seq = floor + 1
        self._active: int | None = None
        self._active_file = None
        for record in self._records(self._ack):
            self.stats.pending_records += 1
            self.stats.pending_samples += record.count
        self._delete_consumed()

    # ---- writing ---------------------------------------------------------------------------

    def append(self, body: bytes, count: int) -> None:
        """Write one batch body durably (fsync) before anything tries to send it."""
        record = encode_record(body, count)
        if self._active is not None and self._sizes[self._active] >= self.segment_bytes:
            self._close_active()
        while self.total_bytes + len(record) > self.max_bytes and self._oldest_inactive() is not None:
            self._drop_oldest()
        if self._active is None:
            self._open_active()
        assert self._active_file is not None and self._active is not None
        self._active_file.write(record)
        self._active_file.flush()
        os.fsync(self._active_file.fileno())
        self._sizes[self._active] += len(record)
        self.stats.appended += 1
        self.stats.pending_records += 1
        self.stats.pending_samples += count

    def _open_active(self) -> None:
        seq = self._next_seq
        self._next_seq += 1
        path = self._segment_path(seq)
        self._active_file = open(path, "ab")  # noqa: SIM115 - held open across appends
        _fsync_dir(self.directory)
        self._active = seq
        self._sizes[seq] = 0

    def _close_active(self) -> None:
        if self._active_file is not None:
            self._active_file.close()
        self._active_file = None
        self._active = None

    def _oldest_inactive(self) -> int | None:
        oldest = min(self._sizes, default=None)
        return oldest if oldest is not None and oldest != self._active else None

    def _drop_oldest(self) -> None:
        seq = self._oldest_inactive()
        assert seq is not None
        if self._ack[0] > seq:
            records: list[SpoolRecord] = []
        else:
            records = list(self._segment_records(seq, self._ack[1] if self._ack[0] == seq else 0))
        samples = sum(r.count for r in records)
        self._remove_segment(seq)
        # What remains starts at the next segment; a pinned batch there may be gone.
        self._ack = max(self._ack, (seq + 1, 0))
        self.stats.dropped_records += len(records)
        self.stats.dropped_samples += samples
        self.stats.pending_records -= len(records)
        self.stats.pending_samples -= samples
        if records:
            log.warning(
                "spool over %d bytes: dropped the oldest %d batches (%d samples); %d dropped so far",
                self.max_bytes, len(records), samples, self.stats.dropped_records,
            )

    # ---- reading and acknowledging ---------------------------------------------------------

    def next_batch(self, *, max_samples: int, max_bytes: int) -> Batch | None:
        """The oldest unacknowledged records as one body: the pinned batch again if one is in flight."""
        pinned = self._pin if self._pin is not None and self._pin > self._ack else None
        chosen: list[SpoolRecord] = []
        samples = size = 0
        for record in self._records(self._ack):
            if pinned is not None:
                if record.end > pinned:
                    break
            elif chosen and (samples + record.count > max_samples or size + len(record.body) > max_bytes):
                break
            chosen.append(record)
            samples += record.count
            size += len(record.body)
        if not chosen and pinned is not None and self._pin_is_stale():
            self.unpin()  # the pinned extent is gone (dropped or torn): form a fresh batch
            return self.next_batch(max_samples=max_samples, max_bytes=max_bytes)
        if not chosen:
            return None
        batch = Batch(
            start=chosen[0].start,
            end=chosen[-1].end,
            records=len(chosen),
            count=sum(r.count for r in chosen),
            body=join_bodies([r.body for r in chosen]),
        )
        if batch.end != self._pin:
            self._write_position("inflight", batch.end)
            self._pin = batch.end
        return batch

    def _pin_is_stale(self) -> bool:
        return next(iter(self._records(self._ack)), None) is not None

    def ack(self, batch: Batch) -> None:
        """The server has stored ``batch``: never read it again."""
        if batch.end <= self._ack:
            return  # dropped meanwhile for space
        if batch.start == self._ack:
            records, samples = batch.records, batch.count
        else:  # part of it was dropped for space and is counted already
            rest = list(takewhile(lambda r: r.end <= batch.end, self._records(self._ack)))
            records, samples = len(rest), sum(r.count for r in rest)
        self._write_position("ack", batch.end)
        self._ack = batch.end
        self.stats.pending_records -= records
        self.stats.pending_samples -= samples
        self._delete_consumed()

    def unpin(self) -> None:
        """Forget the batch in flight (the server refused it whole), so it can be re-formed."""
        self._pin = None
        try:
            (self.directory / "inflight").unlink()
        except FileNotFoundError:
            pass

    def set_aside(self, batch: Batch, reason: str) -> Path:
        """Move a batch the server refused into ``rejected/`` (body + reason) and acknowledge it."""
        folder = self.directory / "rejected"
        folder.mkdir(exist_ok=True, mode=0o700)
        stem = f"{batch.start[0]:016d}-{batch.start[1]:012d}"
        write_atomic(folder / f"{stem}.json", batch.body)
        write_atomic(folder / f"{stem}.error.txt", reason.encode() + b"\n")
        self.ack(batch)
        return folder / f"{stem}.json"

    def _records(self, start: Position) -> Iterator[SpoolRecord]:
        for seq in sorted(s for s in self._sizes if s >= start[0]):
            offset = start[1] if seq == start[0] else 0
            yield from self._segment_records(seq, offset)

    def _segment_records(self, seq: int, offset: int) -> Iterator[SpoolRecord]:
        yield from _read_records(self._segment_path(seq), seq, offset, self._skip)

    def _skip(self, seq: int, offset: int, why: str) -> None:
        key = (seq, offset)
        if key not in self._skipped_at:
            self._skipped_at.add(key)
            self.stats.skipped_records += 1
            log.warning("spool segment %d at byte %d: %s", seq, offset, why)

    # ---- files -----------------------------------------------------------------------------

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes.values())

    def _segment_path(self, seq: int) -> Path:
        return self.directory / f"{_SEGMENT_PREFIX}{seq:016d}{_SEGMENT_SUFFIX}"

    def _delete_consumed(self) -> None:
        for seq, size in list(self._sizes.items()):
            if seq == self._active:
                continue
            if seq < self._ack[0] or (seq == self._ack[0] and self._ack[1] >= size):
                self._remove_segment(seq)

    def _remove_segment(self, seq: int) -> None:
        self._sizes.pop(seq, None)
        try:
            self._segment_path(seq).unlink()
        except FileNotFoundError:
            pass

    def _read_position(self, name: str) -> Position | None:
        try:
            seq, offset = (self.directory / name).read_text().split()
            return int(seq), int(offset)
        except (OSError, ValueError):
            return None

    def _write_position(self, name: str, position: Position) -> None:
        write_atomic(self.directory / name, f"{position[0]} {position[1]}\n".encode())

    def close(self) -> None:
        self._close_active()
        if self._lock_fd >= 0:
            self._delete_consumed()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = -1

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

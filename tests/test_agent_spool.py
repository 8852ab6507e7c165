"""The on-disk spool: order, acknowledgement, torn records, the size bound, byte-identical retries."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gpufleet.server.agent.spool import Spool, SpoolLocked


def body(n: int) -> bytes:
    return json.dumps([{"n": n}], separators=(",", ":")).encode()


def drain(spool: Spool, *, max_samples: int = 1) -> list[int]:
    seen: list[int] = []
    while (batch := spool.next_batch(max_samples=max_samples, max_bytes=1 << 20)) is not None:
        seen.extend(item["n"] for item in json.loads(batch.body))
        spool.ack(batch)
    return seen


def test_batches_drain_oldest_first_and_survive_a_reopen(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 20) as spool:
        for n in range(5):
            spool.append(body(n), 1)
        first = spool.next_batch(max_samples=2, max_bytes=1 << 20)
        assert first is not None and json.loads(first.body) == [{"n": 0}, {"n": 1}]
        spool.ack(first)
    with Spool(tmp_path, max_bytes=1 << 20) as spool:
        assert spool.stats.pending_records == 3
        spool.append(body(5), 1)
        assert drain(spool) == [2, 3, 4, 5]
        assert spool.stats.pending_records == 0
    assert list(tmp_path.glob("seg-*.log")) == []


def test_a_retried_batch_is_byte_identical_even_after_a_restart(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 20) as spool:
        spool.append(body(0), 1)
        spool.append(body(1), 1)
        sent = spool.next_batch(max_samples=100, max_bytes=1 << 20)
        assert sent is not None
        spool.append(body(2), 1)  # arrives while the first attempt is failing
        again = spool.next_batch(max_samples=100, max_bytes=1 << 20)
        assert again is not None and again.body == sent.body
    with Spool(tmp_path, max_bytes=1 << 20) as spool:  # crashed before the ack
        after_restart = spool.next_batch(max_samples=100, max_bytes=1 << 20)
        assert after_restart is not None and after_restart.body == sent.body
        spool.ack(after_restart)
        assert drain(spool) == [2]


def test_a_torn_last_record_is_skipped_and_counted(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 20) as spool:
        spool.append(body(0), 1)
        spool.append(body(1), 1)
    segment = next(tmp_path.glob("seg-*.log"))
    data = segment.read_bytes()
    segment.write_bytes(data[:-5])  # power lost in the middle of the second record
    with Spool(tmp_path, max_bytes=1 << 20) as spool:
        assert spool.stats.skipped_records == 1
        spool.append(body(2), 1)
        assert drain(spool) == [0, 2]


def test_a_corrupt_record_is_skipped_and_the_next_one_read(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 20) as spool:
        for n in range(3):
            spool.append(body(n), 1)
    segment = next(tmp_path.glob("seg-*.log"))
    data = bytearray(segment.read_bytes())
    data[16 + 3] ^= 0xFF  # a flipped bit inside the first record's payload
    segment.write_bytes(bytes(data))
    with Spool(tmp_path, max_bytes=1 << 20) as spool:
        assert drain(spool) == [1, 2]
        assert spool.stats.skipped_records == 1


def test_past_its_bound_the_spool_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    record = len(body(0)) + 16
    with Spool(tmp_path, max_bytes=record * 40, segment_bytes=record * 10) as spool:
        for n in range(100):
            spool.append(body(n), 1)
        assert spool.total_bytes <= record * 40
        dropped = spool.stats.dropped_records
        assert dropped > 0
        kept = drain(spool)
    assert kept == list(range(dropped, 100))  # the newest survive, in order
    assert dropped + len(kept) == 100


def test_a_second_agent_cannot_share_the_spool(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 20), pytest.raises(SpoolLocked):
        Spool(tmp_path, max_bytes=1 << 20)


def test_a_refused_batch_is_set_aside_with_the_reason(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 20) as spool:
        spool.append(body(0), 1)
        batch = spool.next_batch(max_samples=10, max_bytes=1 << 20)
        assert batch is not None
        path = spool.set_aside(batch, "400 Metric at index 0 missing required fields: gpu_uuid")
        assert path.read_bytes() == body(0)
        assert "missing required fields" in path.with_name(path.stem + ".error.txt").read_text()
        assert spool.next_batch(max_samples=10, max_bytes=1 << 20) is None


def crash(spool: Spool) -> None:
    """Let go of the spool as a killed process would: no close(), no clean-up of consumed segments."""
    spool._close_active()
    os.close(spool._lock_fd)
    spool._lock_fd = -1


def test_after_everything_was_acknowledged_a_reopened_spool_still_delivers_new_records(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 20) as spool:
        spool.append(body(0), 1)
        assert drain(spool) == [0]
    assert list(tmp_path.glob("seg-*.log")) == []  # the acknowledged segment is gone
    with Spool(tmp_path, max_bytes=1 << 20) as spool:
        spool.append(body(1), 1)  # the same size as the acknowledged record
        assert spool.stats.pending_records == 1
        assert drain(spool) == [1]
    with Spool(tmp_path, max_bytes=1 << 20) as spool:
        spool.append(body(2), 1)
    with Spool(tmp_path, max_bytes=1 << 20) as spool:  # appended, closed, not yet sent: still there
        assert spool.stats.pending_records == 1
        assert drain(spool) == [2]


def test_reopening_with_nothing_in_between_loses_nothing(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 20) as spool:
        spool.append(body(0), 1)
        assert drain(spool) == [0]
    for _ in range(3):
        with Spool(tmp_path, max_bytes=1 << 20):
            pass
    for n in range(1, 4):
        with Spool(tmp_path, max_bytes=1 << 20) as spool:
            spool.append(body(n), 1)
        for _ in range(2):
            with Spool(tmp_path, max_bytes=1 << 20):
                pass
    with Spool(tmp_path, max_bytes=1 << 20) as spool:
        assert spool.stats.pending_records == 3
        assert drain(spool) == [1, 2, 3]


def test_a_crash_after_the_ack_never_reuses_the_acknowledged_segment(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(body(0), 1)
    assert drain(spool) == [0]
    crash(spool)  # the acknowledged segment is still on disk
    with Spool(tmp_path, max_bytes=1 << 20) as spool:
        spool.append(body(1), 1)
        assert drain(spool) == [1]
    with Spool(tmp_path, max_bytes=1 << 20) as spool:
        spool.append(body(2), 1)
    with Spool(tmp_path, max_bytes=1 << 20) as spool:
        assert drain(spool) == [2]


def test_a_batch_in_flight_at_a_crash_is_delivered_again_exactly_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(body(0), 1)
    spool.append(body(1), 1)
    sent = spool.next_batch(max_samples=100, max_bytes=1 << 20)
    assert sent is not None
    crash(spool)  # killed while the batch was on the wire
    delivered: list[int] = []
    with Spool(tmp_path, max_bytes=1 << 20) as spool:
        spool.append(body(2), 1)
        again = spool.next_batch(max_samples=100, max_bytes=1 << 20)
        assert again is not None and again.body == sent.body
        spool.ack(again)
        delivered += [item["n"] for item in json.loads(again.body)]
        delivered += drain(spool, max_samples=100)
    for _ in range(2):
        with Spool(tmp_path, max_bytes=1 << 20) as spool:
            delivered += drain(spool, max_samples=100)
            spool.append(body(len(delivered)), 1)
    with Spool(tmp_path, max_bytes=1 << 20) as spool:
        delivered += drain(spool, max_samples=100)
    assert delivered == [0, 1, 2, 3, 4]


def test_a_batch_in_flight_that_was_dropped_for_space_does_not_stall_a_restarted_spool(tmp_path: Path) -> None:
    record = len(body(0)) + 16
    spool = Spool(tmp_path, max_bytes=record * 4, segment_bytes=record * 2)
    spool.append(body(0), 1)
    assert spool.next_batch(max_samples=1, max_bytes=1 << 20) is not None  # in flight, never acknowledged
    for n in range(1, 8):
        spool.append(body(n), 1)  # the server is away: the oldest segments go for space
    assert spool.stats.dropped_records > 0
    survivors = list(range(spool.stats.dropped_records, 8))
    crash(spool)  # the saved pin still points into a deleted segment
    with Spool(tmp_path, max_bytes=record * 4, segment_bytes=record * 2) as spool:
        assert drain(spool) == survivors

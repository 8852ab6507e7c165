"""Two defects the store review found: a year-1 sample pending at a crash, a waiter whose loop closed."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from datetime import UTC, date, datetime
from pathlib import Path

from gpufleet.server.store import MetricsStore
from tests.test_store_review import (
    REPO,
    assert_consistent,
    assert_rollup_matches_raw,
)

YEAR_ONE = datetime(1, 1, 1, 0, 1, tzinfo=UTC)

_YEAR_ONE_CRASH = textwrap.dedent("""
    import os, signal, sys
    from datetime import UTC, datetime
    import gpufleet.server.store.writer as writer
    writer.FOLD_WHEN_IDLE_S = writer.FOLD_AFTER_S = 3600.0
    from gpufleet.server.store import MetricsStore
    from tests.test_store_review import rows
    store = MetricsStore.open(sys.argv[1])
    # a valid timestamp (ingest accepts it): the first minutes of year 1
    print(store.writer.submit_sync("acme", rows("GPU-a", 0, 20, t0=datetime(1, 1, 1, 0, 1, tzinfo=UTC)),
                                   datetime.now(UTC)).inserted, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_a_crash_with_a_year_one_sample_pending_reopens(tmp_path: Path) -> None:
    db = tmp_path / "y1.duckdb"
    proc = subprocess.run([sys.executable, "-c", _YEAR_ONE_CRASH, str(db)], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout.strip() == "20"
    with MetricsStore.open(db) as store:
        assert store.sample_count() == 20
        assert_consistent(store)
        assert_rollup_matches_raw(store, "acme", date(1, 1, 1), date(1, 1, 1))


_CLOSED_LOOP = textwrap.dedent("""
    import asyncio, sys, threading
    from datetime import UTC, datetime
    from gpufleet.server.store import MetricsStore
    from tests.test_store_review import BIG, rows
    store = MetricsStore.open(sys.argv[1])
    release = threading.Event()
    store.writer.post(lambda _con: release.wait(30))
    async def main():
        task = asyncio.create_task(store.writer.submit("acme", rows("GPU-a", 0, BIG), datetime.now(UTC)))
        await asyncio.sleep(0)
        task.cancel()  # e.g. a request timeout, then the server's loop ends
        try:
            await task
        except asyncio.CancelledError:
            pass
    asyncio.run(main())  # the loop is closed now; the write is still queued
    release.set()
    later = store.writer.submit_sync("acme", rows("GPU-a", 30 * BIG, 10), datetime.now(UTC))
    print(later.inserted, store.sample_count("acme"), flush=True)
    store.close()
    print("closed", flush=True)
""")


def test_a_submit_whose_loop_closed_does_not_stop_the_writer(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _CLOSED_LOOP, str(tmp_path / "l.duckdb")], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["10", str(500 + 10), "closed"]

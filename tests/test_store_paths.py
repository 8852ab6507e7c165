"""The writer's fast paths on a real DuckDB file: deferred rollup, mixed groups, dedup path, staging."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from gpufleet.server.config import Pricing
from gpufleet.server.failures import StorageFullError
from gpufleet.server.store import MetricsStore
from gpufleet.server.store import staging as staging_mod
from gpufleet.server.store import writer as writer_mod

T0 = datetime(2026, 3, 10, 23, 0, tzinfo=UTC)  # batches below cross midnight into 03-11
DAYS = (date(2026, 3, 10), date(2026, 3, 11))
PRICING = Pricing()
REPO = Path(__file__).resolve().parent.parent
# samples waiting to be folded into the rollup: every sample newer than its GPU's tail
PENDING_SQL = """SELECT count(*) FROM samples s
                 LEFT JOIN gpu_last g ON g.account = s.account AND g.gpu_uuid = s.gpu_uuid
                 WHERE g.ts IS NULL OR s.ts > g.ts"""


def rows(uuid: str, start_s: int, count: int, *, step_s: int = 30, team: str | None = "ml",
         as_text: bool = False) -> list[dict[str, Any]]:
    """``count`` samples of one GPU, ``step_s`` apart from T0 + ``start_s``."""
    out = []
    for i in range(count):
        at = T0 + timedelta(seconds=start_s + i * step_s)
        out.append({
            "timestamp": at.strftime("%Y-%m-%dT%H:%M:%SZ") if as_text else at, "gpu_index": 0,
            "gpu_uuid": uuid, "power_draw_w": 300.0, "utilization_gpu_pct": 3.0 if i % 4 == 0 else 80.0,
            "utilization_memory_pct": 50.0, "temperature_c": 60.0, "memory_used_mb": 1000.0,
            "gpu_name": "NVIDIA H100 80GB HBM3" if uuid.endswith("h") else "NVIDIA A100 80GB",
            "team_id": team, "model_tag": "m", "energy_delta_j": None if i % 3 else 9000.0,
            "job_id": f"{uuid}-{start_s}",
        })
    return out


def assert_rollup_matches_raw(store: MetricsStore, account: str) -> None:
    for first, last in ((DAYS[0], DAYS[0]), (DAYS[1], DAYS[1]), DAYS):
        rolled = store.usage_rows(account, first, last, PRICING)
        assert rolled == store.chargeback_from_samples(account, first, last, PRICING)
    assert store.usage_rows(account, *DAYS, PRICING), f"no usage for {account}"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MetricsStore]:
    s = MetricsStore.open(tmp_path / "paths.duckdb")
    yield s
    s.close()


@pytest.fixture
def paths_taken(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Records (path, rows inserted) for every write group: 'fresh' (no dedup) or 'careful'."""
    taken: list[tuple[str, int]] = []

    def spy(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(con: duckdb.DuckDBPyConnection, *args: Any) -> Any:
            before = con.execute("SELECT count(*) FROM samples").fetchone()[0]
            result = real(con, *args)
            taken.append((name, con.execute("SELECT count(*) FROM samples").fetchone()[0] - before))
            return result
        return wrapped

    monkeypatch.setattr(writer_mod, "write_fresh", spy("fresh", writer_mod.write_fresh))
    monkeypatch.setattr(writer_mod, "write_careful", spy("careful", writer_mod.write_careful))
    return taken


def hold_writer(store: MetricsStore) -> threading.Event:
    """Block the writer thread on a job until the returned event is set (so batches queue up)."""
    release = threading.Event()
    store.writer.post(lambda _con: release.wait(30))
    return release


# ------------------------------------------------------------ crash with rows pending

def test_rows_left_in_the_old_pending_copy_are_folded_at_open(tmp_path: Path) -> None:
    """A store written before schema 6 may hold pending samples as copied rows."""
    db = tmp_path / "legacy.duckdb"
    with MetricsStore.open(db) as store:
        store.writer.submit_sync("acme", rows("GPU-a", 0, 40), T0)
        store.writer.sync_rollup()
    later = rows("GPU-a", 3000, 200)
    with duckdb.connect(str(db)) as con:  # what a schema-5 writer left behind at a crash
        columns = ("account, ts, gpu_index, gpu_uuid, power_draw_w, utilization_gpu_pct, utilization_memory_pct, "
                   "temperature_c, memory_used_mb, gpu_name, team_id, model_tag, energy_delta_j, received_at")
        for r in later:
            values = ["acme", r["timestamp"].replace(tzinfo=None), 0, r["gpu_uuid"], r["power_draw_w"],
                      r["utilization_gpu_pct"], r["utilization_memory_pct"], r["temperature_c"],
                      r["memory_used_mb"], r["gpu_name"], r["team_id"], r["model_tag"], r["energy_delta_j"],
                      T0.replace(tzinfo=None)]
            con.execute(f"INSERT INTO samples ({columns}) VALUES ({', '.join('?' * len(values))})", values)
        con.execute("""INSERT INTO rollup_pending
                       SELECT account, gpu_uuid, ts, gpu_name, team_id, model_tag, power_draw_w,
                              energy_delta_j, utilization_gpu_pct, received_at, hostname
                       FROM samples WHERE ts >= ?""", [(T0 + timedelta(seconds=3000)).replace(tzinfo=None)])
    with MetricsStore.open(db) as store:
        assert store.query(PENDING_SQL)[0][0] == 0
        assert store.query("SELECT count(*) FROM rollup_pending")[0][0] == 0
        tail = store.query("SELECT ts FROM gpu_last WHERE gpu_uuid = 'GPU-a'")[0][0]
        assert tail == (T0 + timedelta(seconds=3000 + 199 * 30)).replace(tzinfo=None)
        assert_rollup_matches_raw(store, "acme")


_CRASH_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from datetime import UTC, datetime
    import gpufleet.server.store.writer as writer
    writer.FOLD_WHEN_IDLE_S = writer.FOLD_AFTER_S = 3600.0  # the fold never comes on its own
    from gpufleet.server.store import MetricsStore
    from tests.test_store_paths import rows
    store = MetricsStore.open(sys.argv[1])
    now = datetime.now(UTC)
    store.writer.submit_sync("acme", rows("GPU-a", 0, 100), now)
    store.writer.sync_rollup()  # the first batch is folded: the crash leaves later ones pending
    store.writer.submit_sync("acme", rows("GPU-a", 3000, 200), now)
    store.writer.submit_sync("acme", rows("GPU-bh", 0, 300, team="infer"), now)
    store.writer.submit_sync("globex", rows("GPU-a", 0, 150, team=None), now)
    print(store.writer.pending_rows, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_rows_pending_at_a_crash_are_folded_when_the_store_reopens(tmp_path: Path) -> None:
    db = tmp_path / "crash.duckdb"
    proc = subprocess.run([sys.executable, "-c", _CRASH_SCRIPT, str(db)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert int(proc.stdout.strip()) == 650
    with duckdb.connect(str(db), read_only=True) as con:  # replays the WAL, writes nothing
        assert con.execute(PENDING_SQL).fetchone()[0] == 650
        assert con.execute("SELECT count(*) FROM pending_since").fetchone()[0] == 1
        assert con.execute("SELECT count(*) FROM samples").fetchone()[0] == 750
    with MetricsStore.open(db) as store:
        assert store.writer.pending_rows == 0
        assert store.query(PENDING_SQL)[0][0] == 0
        assert store.query("SELECT count(*) FROM pending_since")[0][0] == 0
        tails = dict(store.query("SELECT account || '/' || gpu_uuid, ts FROM gpu_last"))
        assert tails["acme/GPU-a"] == (T0 + timedelta(seconds=3000 + 199 * 30)).replace(tzinfo=None)
        assert set(tails) == {"acme/GPU-a", "acme/GPU-bh", "globex/GPU-a"}
        for account in ("acme", "globex"):
            assert_rollup_matches_raw(store, account)
        teams = {t.team_id for t in store.chargeback("acme", *DAYS, PRICING).teams}
        assert teams == {"ml", "infer"}


# ------------------------------------------------- mixed small and large batches, one group

async def test_one_group_of_mixed_batches_across_accounts(store: MetricsStore,
                                                          paths_taken: list[tuple[str, int]]) -> None:
    big = staging_mod.PACK_BELOW_ROWS
    plan = [  # (account, samples, received_at): small batches share a file, big ones have their own
        ("acme", rows("GPU-a", 0, 10), T0 + timedelta(seconds=1)),
        ("acme", rows("GPU-bh", 0, big + 100), T0 + timedelta(seconds=2)),
        ("globex", rows("GPU-a", 0, 40, team="g"), T0 + timedelta(seconds=3)),
        ("acme", rows("GPU-c", 0, 90, as_text=True), T0 + timedelta(seconds=4)),
        ("initech", rows("GPU-a", 0, big, team=None), T0 + timedelta(seconds=5)),
        ("globex", rows("GPU-d", 0, 1), T0 + timedelta(seconds=6)),
        ("initech", rows("GPU-bh", 0, 2 * big, step_s=15), T0 + timedelta(seconds=7)),
    ]
    release = hold_writer(store)
    tasks = [asyncio.create_task(store.writer.submit(a, s, at)) for a, s, at in plan]
    await asyncio.sleep(0)  # every task has queued its batch behind the held job
    release.set()
    results = await asyncio.gather(*tasks)

    total = sum(len(s) for _, s, _ in plan)
    assert paths_taken == [("fresh", total)]  # one group, no dedup
    assert [(r.inserted, r.duplicates) for r in results] == [(len(s), 0) for _, s, _ in plan]
    for account in ("acme", "globex", "initech"):
        assert store.sample_count(account) == sum(len(s) for a, s, _ in plan if a == account)
    received = store.query("SELECT account, job_id, min(received_at), max(received_at), count(*) "
                           "FROM samples GROUP BY ALL")
    expected = {(a, s[0]["job_id"]): (at.replace(tzinfo=None), len(s)) for a, s, at in plan}
    assert {(a, job): (lo, n) for a, job, lo, hi, n in received if lo == hi} == expected
    for account in ("acme", "globex", "initech"):
        assert_rollup_matches_raw(store, account)


# ------------------------------------------------------------- fast path vs dedup path

async def test_late_and_duplicate_samples_take_the_dedup_path_and_count_exactly(
        store: MetricsStore, paths_taken: list[tuple[str, int]]) -> None:
    now = datetime.now(UTC)
    first = await store.writer.submit("acme", rows("GPU-a", 600, 20), now)
    assert (first.inserted, first.duplicates) == (20, 0)
    assert paths_taken[-1] == ("fresh", 20)

    # in order but the same sample (gpu, timestamp, workload) twice in one batch: the repeat
    # is dropped where the batch is staged, so the rest still takes the fast path
    twice = rows("GPU-a", 1200, 5)
    result = await store.writer.submit("acme", twice + twice[2:3], now)
    assert (result.inserted, result.duplicates) == (5, 1)
    assert paths_taken[-1] == ("fresh", 5)

    # late: 10 samples older than the tail (never stored), 4 resent ones, 3 new at the end
    late = rows("GPU-a", 0, 10) + rows("GPU-a", 600, 4) + rows("GPU-a", 1500, 3)
    result = await store.writer.submit("acme", late, now)
    assert (result.inserted, result.duplicates) == (13, 4)
    assert paths_taken[-1] == ("careful", 13)

    # the same GPU in another account is not a duplicate, and the tail is per account
    other = await store.writer.submit("globex", rows("GPU-a", 0, 10), now)
    assert (other.inserted, other.duplicates) == (10, 0)
    assert paths_taken[-1] == ("fresh", 10)

    # after the careful path, new samples take the fast path again
    again = await store.writer.submit("acme", rows("GPU-a", 1590, 7), now)
    assert (again.inserted, again.duplicates) == (7, 0)
    assert paths_taken[-1] == ("fresh", 7)

    assert store.sample_count("acme") == 20 + 5 + 13 + 7
    distinct = store.query("SELECT count(DISTINCT ts) FROM samples WHERE account = 'acme'")[0][0]
    assert distinct == store.sample_count("acme")
    assert_rollup_matches_raw(store, "acme")


async def test_a_group_mixing_fresh_and_resent_batches_counts_each_batch(
        store: MetricsStore, paths_taken: list[tuple[str, int]]) -> None:
    now = datetime.now(UTC)
    stored = rows("GPU-a", 0, 30)
    await store.writer.submit("acme", stored, now)
    release = hold_writer(store)
    tasks = [asyncio.create_task(store.writer.submit("acme", batch, now))
             for batch in (rows("GPU-bh", 0, 50), stored[:10], rows("GPU-a", 900, 10), stored[5:15])]
    await asyncio.sleep(0)
    release.set()
    results = [(r.inserted, r.duplicates) for r in await asyncio.gather(*tasks)]
    assert results == [(50, 0), (0, 10), (10, 0), (0, 10)]
    assert paths_taken[-1] == ("careful", 60)
    assert store.sample_count("acme") == 90
    assert_rollup_matches_raw(store, "acme")


# ------------------------------------------------------------------ reads after writes

def test_a_failed_group_keeps_earlier_pending_samples_known(store: MetricsStore, paths_taken: list[tuple[str, int]],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A rolled-back group reloads the tail; samples still pending must count as stored."""
    monkeypatch.setattr(writer_mod, "FOLD_WHEN_IDLE_S", 3600.0)  # nothing is folded on its own
    monkeypatch.setattr(writer_mod, "FOLD_AFTER_S", 3600.0)
    first = rows("GPU-a", 0, 50)
    assert store.writer.submit_sync("acme", first, T0).inserted == 50
    assert store.writer.pending_rows == 50
    real = writer_mod.write_fresh
    calls = {"n": 0}

    def fail_once(con: duckdb.DuckDBPyConnection, *args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise duckdb.IOException("disk went away")
        return real(con, *args)

    monkeypatch.setattr(writer_mod, "write_fresh", fail_once)
    with pytest.raises(StorageFullError):  # how the store reports DuckDB's I/O errors
        store.writer.submit_sync("acme", rows("GPU-a", 3000, 10), T0)
    assert store.writer.pending_rows == 50
    again = store.writer.submit_sync("acme", first[40:], T0)  # pending, not folded yet
    assert (again.inserted, again.duplicates) == (0, 10)
    assert paths_taken[-1] == ("careful", 0)
    assert store.sample_count("acme") == 50
    assert_rollup_matches_raw(store, "acme")


async def test_a_report_right_after_an_ingest_sees_it(store: MetricsStore,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_mod, "FOLD_WHEN_IDLE_S", 3600.0)  # only a read may fold
    monkeypatch.setattr(writer_mod, "FOLD_AFTER_S", 3600.0)
    await store.writer.submit("acme", rows("GPU-a", 0, 120, step_s=60), datetime.now(UTC))
    assert store.writer.pending_rows == 120
    report = await asyncio.to_thread(store.chargeback, "acme", *DAYS, PRICING)
    assert report.summary.total_gpu_hours == 2.0  # 120 samples x 60 s
    assert store.writer.pending_rows == 0
    await store.writer.submit("acme", rows("GPU-a", 7200, 60, step_s=60), datetime.now(UTC))
    assert store.writer.pending_rows == 60
    csv_text = await asyncio.to_thread(store.chargeback_csv, "acme", *DAYS, PRICING)
    assert sum(float(line.split(",")[3]) for line in csv_text.splitlines()[1:]) == 3.0
    tail = store.query("SELECT ts FROM gpu_last WHERE account = 'acme'")
    assert tail == [((T0 + timedelta(seconds=7200 + 59 * 60)).replace(tzinfo=None),)]

# ---------------------------------------------------------------------------- staging

def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_staging_folders_of_dead_writers_are_removed_at_open(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "stage"
    base.mkdir()
    monkeypatch.setenv(staging_mod.STAGING_DIR_ENV, str(base))
    dead = base / f"gpufleet-ingest-{_dead_pid()}-abc"
    dead.mkdir()
    (dead / "batch-0.json").write_text("[]")
    alive = base / f"gpufleet-ingest-{os.getppid()}-xyz"  # a live process's folder stays
    alive.mkdir()
    unrelated = base / "something-else"
    unrelated.mkdir()
    with MetricsStore.open(tmp_path / "s.duckdb") as store:
        folder = Path(store.writer.staging_folder)
        assert folder.parent == base and folder.name.startswith(f"gpufleet-ingest-{os.getpid()}-")
        assert not dead.exists() and alive.is_dir() and unrelated.is_dir()
        result = store.writer.submit_sync("acme", rows("GPU-a", 0, 600), datetime.now(UTC))
        assert result.inserted == 600
    assert not folder.exists()  # a clean close removes its own folder


@pytest.mark.parametrize("configured", ["missing", "a-file"])
def test_staging_falls_back_when_its_folders_are_unusable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          configured: str) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv(staging_mod.STAGING_DIR_ENV, str(tmp_path / configured))
    monkeypatch.setattr(staging_mod, "MEMORY_DIR", str(tmp_path / "no-shm"))  # as on a box without /dev/shm
    fallback = tmp_path / "tmp"
    fallback.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(fallback))
    with MetricsStore.open(tmp_path / "s.duckdb") as store:
        assert Path(store.writer.staging_folder).parent == fallback
        small = store.writer.submit_sync("acme", rows("GPU-a", 0, 10), datetime.now(UTC))
        large = store.writer.submit_sync("acme", rows("GPU-bh", 0, 700), datetime.now(UTC))
        assert (small.inserted, large.inserted) == (10, 700)
        assert_rollup_matches_raw(store, "acme")
    assert not (tmp_path / "no-shm").exists()


def test_a_staging_folder_removed_while_running_is_made_again_under_a_new_name(store: MetricsStore) -> None:
    folder = Path(store.writer.staging_folder)
    store.writer.submit_sync("acme", rows("GPU-a", 0, 10), datetime.now(UTC))
    for child in folder.iterdir():
        child.unlink()
    folder.rmdir()  # a tmp cleaner at work
    folder.mkdir()  # someone else takes the old name in the shared folder
    folder.chmod(0o777)
    result = store.writer.submit_sync("acme", rows("GPU-a", 600, 10), datetime.now(UTC))
    assert result.inserted == 10 and store.sample_count("acme") == 20
    fresh = Path(store.writer.staging_folder)
    assert fresh != folder and fresh.is_dir()
    assert fresh.stat().st_mode & 0o777 == 0o700 and fresh.stat().st_uid == os.getuid()
    assert not any(folder.iterdir())  # nothing of ours went into the folder we did not make
    folder.rmdir()

"""A reviewer's attempts to break the store's write path (fresh groups, deferred rollup, crash mark).

Every test runs on a real DuckDB file; crashes are real SIGKILLs of a child process.
The invariant under attack: every sample newer than its GPU's tail in ``gpu_last`` is
pending, the rollup equals the raw computation once folded, and no sample is stored twice.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from gpufleet.server.config import Pricing
from gpufleet.server.schemas import Heartbeat
from gpufleet.server.store import MetricsStore
from gpufleet.server.store import staging as staging_mod
from gpufleet.server.store import writer as writer_mod

T0 = datetime(2026, 3, 10, 23, 0, tzinfo=UTC)  # samples from here cross midnight into 03-11
PRICING = Pricing()
REPO = Path(__file__).resolve().parent.parent
PENDING_SQL = """SELECT count(*) FROM samples s
                 LEFT JOIN gpu_last g ON g.account = s.account AND g.gpu_uuid = s.gpu_uuid
                 WHERE g.ts IS NULL OR s.ts > g.ts"""
BIG = staging_mod.PACK_BELOW_ROWS  # a batch this large gets a staged file of its own


def rows(uuid: str, start_s: int, count: int, *, step_s: int = 30, team: str | None = "ml",
         t0: datetime = T0) -> list[dict[str, Any]]:
    """``count`` samples of one GPU, ``step_s`` apart from ``t0`` + ``start_s``."""
    return [{
        "timestamp": t0 + timedelta(seconds=start_s + i * step_s), "gpu_index": 0, "gpu_uuid": uuid,
        "power_draw_w": 250.0 + i % 7, "utilization_gpu_pct": 2.0 if i % 5 == 0 else 90.0,
        "utilization_memory_pct": 40.0, "temperature_c": 55.0, "memory_used_mb": 900.0,
        "gpu_name": "NVIDIA H100 80GB HBM3", "team_id": team, "model_tag": "m",
        "energy_delta_j": None if i % 4 else 7000.0,
    } for i in range(count)]


def days_of(samples: list[dict[str, Any]]) -> tuple[date, date]:
    stamps = [s["timestamp"] for s in samples]
    return min(stamps).date(), max(stamps).date()


def assert_rollup_matches_raw(store: MetricsStore, account: str, first: date, last: date) -> None:
    """The rollup's report equals the raw one for every single day and for the whole span."""
    spans = [(first + timedelta(days=i), first + timedelta(days=i)) for i in range((last - first).days + 1)]
    for a, b in [*spans, (first, last)]:
        assert store.usage_rows(account, a, b, PRICING) == store.chargeback_from_samples(account, a, b, PRICING), (
            account, a, b)
    assert store.usage_rows(account, first, last, PRICING), f"no usage for {account}"


def assert_consistent(store: MetricsStore) -> None:
    """No sample twice, nothing left pending, every tail the GPU's newest sample."""
    total, distinct = store.query(
        "SELECT count(*), count(DISTINCT (account, gpu_uuid, ts)) FROM samples")[0]
    assert total == distinct
    assert store.query(PENDING_SQL)[0][0] == 0
    assert store.query("SELECT count(*) FROM pending_since")[0][0] == 0
    wrong_tails = store.query("""SELECT count(*) FROM (SELECT account, gpu_uuid, max(ts) AS ts FROM samples
                                 GROUP BY ALL) s FULL JOIN gpu_last g USING (account, gpu_uuid)
                                 WHERE g.ts IS DISTINCT FROM s.ts""")[0][0]
    assert wrong_tails == 0


def unfolded(store: MetricsStore, sql: str) -> Any:
    """A read that does not fold first (``query`` does): what is durable right now."""
    with store._cursor() as cur:
        return cur.execute(sql).fetchall()


def hold_writer(store: MetricsStore) -> threading.Event:
    """Block the writer thread on a job until the returned event is set (so batches queue up)."""
    release = threading.Event()
    store.writer.post(lambda _con: release.wait(30))
    return release


@pytest.fixture
def no_auto_fold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only reads, other writes and close fold pending rows in."""
    monkeypatch.setattr(writer_mod, "FOLD_WHEN_IDLE_S", 3600.0)
    monkeypatch.setattr(writer_mod, "FOLD_AFTER_S", 3600.0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MetricsStore]:
    s = MetricsStore.open(tmp_path / "review.duckdb")
    yield s
    s.close()


@pytest.fixture
def paths_taken(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The path ('fresh' or 'careful') of every committed-or-not write group, in order."""
    taken: list[str] = []

    def spy(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any) -> Any:
            taken.append(name)
            return real(*args)
        return wrapped

    monkeypatch.setattr(writer_mod, "write_fresh", spy("fresh", writer_mod.write_fresh))
    monkeypatch.setattr(writer_mod, "write_careful", spy("careful", writer_mod.write_careful))
    return taken


_REAL_WRITE_FRESH = writer_mod.write_fresh


@pytest.fixture
def grouped(paths_taken: list[str], monkeypatch: pytest.MonkeyPatch
            ) -> Callable[[MetricsStore, list[tuple[str, list[dict[str, Any]]]]], Any]:
    """``await grouped(store, plan)``: every batch of ``plan`` written as ONE group, nothing folded before.

    A call job would hold the writer too, but it folds what is pending first; instead a
    one-sample "blocker" group (its own account) stops inside its insert until the plan's
    batches are queued behind it. The blocker's own path is not recorded in ``paths_taken``.
    """
    gate = {"armed": False}
    entered, release = threading.Event(), threading.Event()
    outer = writer_mod.write_fresh

    def write_fresh(con: duckdb.DuckDBPyConnection, source: str) -> None:
        if gate["armed"]:
            gate["armed"] = False
            entered.set()
            release.wait(30)
            return _REAL_WRITE_FRESH(con, source)
        return outer(con, source)

    monkeypatch.setattr(writer_mod, "write_fresh", write_fresh)
    blocks = {"n": 0}

    async def submit(store: MetricsStore, plan: list[tuple[str, list[dict[str, Any]]]]) -> list[tuple[int, int]]:
        entered.clear()
        release.clear()
        gate["armed"] = True
        blocks["n"] += 1
        blocker = asyncio.create_task(store.writer.submit(
            "_hold", rows("GPU-hold", blocks["n"] * 30, 1, t0=T0 + timedelta(days=2)), T0))
        assert await asyncio.to_thread(entered.wait, 30)
        tasks = [asyncio.create_task(store.writer.submit(account, batch, T0)) for account, batch in plan]
        await asyncio.sleep(0)  # every task has queued its batch behind the blocker
        release.set()
        await blocker
        return [(r.inserted, r.duplicates) for r in await asyncio.gather(*tasks)]

    return submit


# --------------------------------------------------------- same gpu_uuid in several accounts

async def test_accounts_sharing_a_gpu_uuid_keep_separate_tails_and_pending_ranges(
        store: MetricsStore, paths_taken: list[str], grouped: Any, no_auto_fold: None) -> None:
    # globex's GPU-x runs far behind acme's: fresh per (account, gpu), never a duplicate
    first = [("acme", rows("GPU-x", 3600, 40)), ("globex", rows("GPU-x", 0, 40, team="g")),
             ("initech", rows("GPU-x", 1800, BIG, step_s=5))]
    assert await grouped(store, first) == [(40, 0), (40, 0), (BIG, 0)]
    second = [("globex", rows("GPU-x", 1200, 40, team="g")), ("acme", rows("GPU-x", 4800, 40))]
    assert await grouped(store, second) == [(40, 0), (40, 0)]
    assert paths_taken == ["fresh", "fresh"]
    assert store.writer.pending_rows == 40 * 4 + BIG + 2  # and the two blockers' samples
    # resending acme's pending rows next to a fresh globex batch: exact counts per batch
    third = [("globex", rows("GPU-x", 2400, 10, team="g")), ("acme", rows("GPU-x", 3600, 40)),
             ("initech", rows("GPU-x", 1800, 20, step_s=5))]
    assert await grouped(store, third) == [(10, 0), (0, 40), (0, 20)]
    assert paths_taken[-1] == "careful"
    assert store.sample_count("acme") == 80
    assert store.sample_count("globex") == 90
    assert store.sample_count("initech") == BIG
    assert_consistent(store)
    for account in ("acme", "globex", "initech"):
        assert_rollup_matches_raw(store, account, T0.date(), T0.date() + timedelta(days=1))


# ---------------------------------------------- a later group between the tail and pending rows

async def test_samples_between_the_tail_and_the_pending_range_take_the_careful_path(
        store: MetricsStore, paths_taken: list[str], no_auto_fold: None) -> None:
    assert store.writer.submit_sync("acme", rows("GPU-a", 0, 20), T0).inserted == 20
    store.writer.sync_rollup()  # tail at 570 s
    assert store.writer.submit_sync("acme", rows("GPU-a", 3000, 20), T0).inserted == 20  # pending
    assert store.writer.pending_rows == 20
    # newer than gpu_last, older than the pending range, plus 3 pending ones resent
    between = rows("GPU-a", 1200, 20) + rows("GPU-a", 3000, 3)
    result = await store.writer.submit("acme", between, T0)
    assert (result.inserted, result.duplicates) == (20, 3)
    assert paths_taken == ["fresh", "fresh", "careful"]
    assert store.writer.pending_rows == 0
    # fresh again after the careful group, just past the newest sample
    assert (await store.writer.submit("acme", rows("GPU-a", 3600, 5), T0)).inserted == 5
    assert paths_taken[-1] == "fresh"
    assert store.sample_count("acme") == 65
    assert_consistent(store)
    assert_rollup_matches_raw(store, "acme", T0.date(), T0.date())


async def test_a_fresh_gpu_batch_after_an_interleaving_one_in_the_same_group(
        store: MetricsStore, paths_taken: list[str], grouped: Any) -> None:
    """Two batches of one GPU whose ranges interleave cannot both be 'newer than the tail'."""
    evens = rows("GPU-a", 0, 30, step_s=60)
    odds = rows("GPU-a", 30, 30, step_s=60)
    assert await grouped(store, [("acme", evens), ("acme", odds), ("acme", evens[:5])]) == [
        (30, 0), (30, 0), (0, 5)]
    assert paths_taken == ["careful"]
    assert_consistent(store)
    assert_rollup_matches_raw(store, "acme", T0.date(), T0.date() + timedelta(days=1))


# ------------------------------------------------------------ other writes between fresh groups

async def test_keys_and_heartbeats_between_fresh_groups_fold_first(
        store: MetricsStore, paths_taken: list[str], no_auto_fold: None) -> None:
    start = 0
    for i in range(4):
        assert (await store.writer.submit("acme", rows("GPU-a", start, 25), T0)).inserted == 25
        assert (await store.writer.submit("acme", rows("GPU-b", start + 7, 25), T0)).inserted == 25
        assert store.writer.pending_rows == 50
        assert unfolded(store, "SELECT count(*) FROM pending_since") == [(1,)]
        if i % 2:
            await asyncio.to_thread(store.record_heartbeat, "acme",
                                    Heartbeat(agent_version="1", gpu_count=2, hostname="n1"), T0)
        else:
            await asyncio.to_thread(store.create_key, f"k{i}", ["ingest"], "acme")
        # the call folded first: nothing pending in memory or on disk
        assert store.writer.pending_rows == 0
        assert unfolded(store, PENDING_SQL) == [(0,)]
        assert unfolded(store, "SELECT count(*) FROM pending_since") == [(0,)]
        start += 25 * 30
    assert paths_taken == ["fresh"] * 8
    assert store.sample_count("acme") == 200
    assert_consistent(store)
    assert_rollup_matches_raw(store, "acme", T0.date(), T0.date() + timedelta(days=1))


async def test_rebuild_rollup_with_rows_pending_counts_them_once(store: MetricsStore, no_auto_fold: None) -> None:
    await store.writer.submit("acme", rows("GPU-a", 0, 60), T0)
    store.writer.sync_rollup()
    await store.writer.submit("acme", rows("GPU-a", 1800, 60), T0)
    await store.writer.submit("acme", rows("GPU-b", 0, BIG, step_s=10), T0)
    assert store.writer.pending_rows == 60 + BIG
    await asyncio.to_thread(store.rebuild_rollup)
    assert store.writer.pending_rows == 0
    await store.writer.submit("acme", rows("GPU-a", 3600, 30), T0)  # pending again, after the rebuild
    covered = store.query("SELECT sum(covered_us) FROM usage_daily")[0][0]
    # every sample but each GPU's last one is closed: GPU-a 149 x 30 s, GPU-b (BIG - 1) x 10 s
    assert covered == (149 * 30 + (BIG - 1) * 10) * 1_000_000
    assert_consistent(store)
    assert_rollup_matches_raw(store, "acme", T0.date(), T0.date() + timedelta(days=1))


# --------------------------------------------------------------------- cancellation, staging

async def test_a_cancelled_submit_is_still_written_and_its_file_removed_after(store: MetricsStore) -> None:
    folder = Path(store.writer.staging_folder)
    batch = rows("GPU-a", 0, BIG + 10)
    release = hold_writer(store)
    task = asyncio.create_task(store.writer.submit("acme", batch, T0))
    await asyncio.sleep(0)
    staged = list(folder.glob("batch-*.json"))
    assert len(staged) == 1  # written where it was submitted
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert staged[0].exists()  # the writer still needs it
    release.set()
    for _ in range(500):  # the file goes once the writer has answered (on this loop)
        if not staged[0].exists():
            break
        await asyncio.sleep(0.01)
    assert not staged[0].exists()
    assert store.sample_count("acme") == BIG + 10
    again = await store.writer.submit("acme", batch, T0)  # the client retries after its timeout
    assert (again.inserted, again.duplicates) == (0, BIG + 10)
    assert_consistent(store)


async def test_a_staging_folder_removed_under_a_queued_group_fails_whole_and_recovers(
        store: MetricsStore) -> None:
    folder = Path(store.writer.staging_folder)
    release = hold_writer(store)
    tasks = [asyncio.create_task(store.writer.submit("acme", rows("GPU-a", 0, BIG), T0)),
             asyncio.create_task(store.writer.submit("acme", rows("GPU-b", 0, 10), T0))]
    await asyncio.sleep(0)
    for child in folder.iterdir():
        child.unlink()
    folder.rmdir()  # a tmp cleaner at work while the big batch's file waits
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    stored = store.sample_count("acme")
    if all(isinstance(r, BaseException) for r in results):
        assert stored == 0  # nothing of the group is half-stored
    else:
        assert [(r.inserted, r.duplicates) for r in results] == [(BIG, 0), (10, 0)]
        assert stored == BIG + 10
    # the writer goes on: a retry of both stores exactly what is missing
    retry = [await store.writer.submit("acme", rows("GPU-a", 0, BIG), T0),
             await store.writer.submit("acme", rows("GPU-b", 0, 10), T0)]
    assert sum(r.inserted for r in retry) == BIG + 10 - stored
    assert store.sample_count("acme") == BIG + 10
    assert_consistent(store)


# ---------------------------------------------------------------------- close and reopen

def test_close_with_rows_pending_folds_and_a_reopen_continues(tmp_path: Path, no_auto_fold: None) -> None:
    db = tmp_path / "close.duckdb"
    with MetricsStore.open(db) as store:
        store.writer.submit_sync("acme", rows("GPU-a", 0, 40), T0)
        store.writer.submit_sync("acme", rows("GPU-new", -86_400 * 3, 40), T0)  # far older, new GPU
        assert store.writer.pending_rows == 80
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute(PENDING_SQL).fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM pending_since").fetchone()[0] == 0
    with MetricsStore.open(db) as store:
        resent = store.writer.submit_sync("acme", rows("GPU-a", 30 * 30, 20), T0)
        assert (resent.inserted, resent.duplicates) == (10, 10)
        assert store.sample_count("acme") == 90
        assert_consistent(store)
        assert_rollup_matches_raw(store, "acme", T0.date() - timedelta(days=3), T0.date() + timedelta(days=1))


# ------------------------------------------------------------------------------ crashes

_CRASH_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from datetime import timedelta
    import gpufleet.server.store.writer as writer
    writer.FOLD_WHEN_IDLE_S = writer.FOLD_AFTER_S = 3600.0  # the fold never comes on its own
    from gpufleet.server.store import MetricsStore
    from tests.test_store_review import T0, rows
    store = MetricsStore.open(sys.argv[1])
    w = store.writer
    w.submit_sync("acme", rows("GPU-a", 0, 50), T0)
    w.sync_rollup()
    w.submit_sync("acme", rows("GPU-a", 3000, 50), T0)          # sets the mark
    w.submit_sync("globex", rows("GPU-a", 2990, 50), T0)        # a little below: within the margin
    w.submit_sync("acme", rows("GPU-b", 4000, 500), T0)         # big batch, its own file
    # a new GPU whose first samples are two days older than anything pending: lowers the mark
    w.submit_sync("acme", rows("GPU-old", -2 * 86_400, 60, team="old"), T0)
    with store._cursor() as cur:
        print(cur.execute("SELECT epoch_us(since) FROM pending_since").fetchall(), w.pending_rows, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_a_crash_right_after_a_group_lowered_the_mark_loses_nothing_from_the_rollup(tmp_path: Path) -> None:
    db = tmp_path / "crash.duckdb"
    proc = subprocess.run([sys.executable, "-c", _CRASH_SCRIPT, str(db)], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    marks, pending_rows = proc.stdout.split()
    old_low_us = int((T0 - timedelta(days=2) - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1e6)
    assert marks == f"[({old_low_us - 600_000_000},)]"
    assert int(pending_rows) == 50 + 50 + 500 + 60
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute(PENDING_SQL).fetchone()[0] == 660
    with MetricsStore.open(db) as store:
        assert store.writer.pending_rows == 0
        assert store.sample_count() == 710
        assert_consistent(store)
        assert_rollup_matches_raw(store, "acme", T0.date() - timedelta(days=2), T0.date() + timedelta(days=1))
        assert_rollup_matches_raw(store, "globex", T0.date(), T0.date() + timedelta(days=1))
        teams = {t.team_id for t in store.chargeback("acme", T0.date() - timedelta(days=2), T0.date(),
                                                     PRICING).teams}
        assert teams == {"ml", "old"}
        # a resend after the restart is all duplicates
        again = store.writer.submit_sync("acme", rows("GPU-old", -2 * 86_400, 60, team="old"), T0)
        assert (again.inserted, again.duplicates) == (0, 60)


# ------------------------------------------------------------------ many writers, checked

async def test_concurrent_mixed_traffic_stores_each_sample_once_and_rolls_up_exactly(
        store: MetricsStore, grouped: Any, paths_taken: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Waves of concurrent batches: in order, resent, late and interleaved, with folds in between."""
    monkeypatch.setattr(writer_mod, "FOLD_AT_ROWS", 150)
    rng = random.Random(7)
    accounts, gpus = ("acme", "globex"), ("GPU-1", "GPU-2", "GPU-3")
    timeline = {(a, g): rows(g, rng.randrange(0, 300), 240, team=rng.choice(["t1", "t2", None]))
                for a in accounts for g in gpus}
    cursor = dict.fromkeys(timeline, 0)
    sent: list[tuple[str, list[dict[str, Any]]]] = []
    unique: set[tuple[str, str, datetime]] = set()
    totals = [0, 0]
    for wave in range(12):
        plan: list[tuple[str, list[dict[str, Any]]]] = []
        for key in rng.sample(sorted(timeline), 4):
            size = rng.randrange(5, 40)
            start = cursor[key]
            plan.append((key[0], timeline[key][start:start + size]))
            cursor[key] = start + size
        if sent and rng.random() < 0.5:  # a resend of an earlier batch (some may still be pending)
            plan.append(rng.choice(sent))
        if wave % 3 == 2:  # late: a slice from the middle of what was sent, partly new
            key = rng.choice(sorted(timeline))
            plan.append((key[0], timeline[key][max(0, cursor[key] - 60):cursor[key] + 5][::2]))
        plan = [(a, b) for a, b in plan if b]
        rng.shuffle(plan)
        results = await grouped(store, plan)
        for (account, batch), (ins, dup) in zip(plan, results, strict=True):
            assert ins + dup == len(batch)
            totals[0] += ins
            totals[1] += dup
            unique.update((account, s["gpu_uuid"], s["timestamp"]) for s in batch)
        sent.extend(plan)
        if wave == 6:
            await asyncio.to_thread(store.record_heartbeat, "acme",
                                    Heartbeat(agent_version="1", gpu_count=3, hostname="n1"), T0)
    assert totals[0] == len(unique) == store.sample_count("acme") + store.sample_count("globex")
    assert totals[1] == sum(len(b) for _, b in sent) - len(unique)
    assert {"fresh", "careful"} <= set(paths_taken)  # both paths were exercised
    assert_consistent(store)
    for account in accounts:
        assert_rollup_matches_raw(store, account, T0.date(), T0.date() + timedelta(days=1))

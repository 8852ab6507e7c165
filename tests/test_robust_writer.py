"""One bad write or fold never stalls the store: failures are isolated and healed.

Faults are injected into the writer's SQL steps (a fold, a group's insert); everything
else is the real store on a real DuckDB file.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from gpufleet.server.failures import RollupBehindError
from gpufleet.server.store import MetricsStore
from gpufleet.server.store import pending as pending_mod
from gpufleet.server.store import writer as writer_mod
from tests.test_store_review import (
    BIG,
    T0,
    assert_consistent,
    assert_rollup_matches_raw,
    hold_writer,
    rows,
)

DAY = T0.date(), (T0 + timedelta(days=1)).date()


class FoldFault:
    """Makes ``pending.fold`` (and, when asked, the catch-up) raise while ``on``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, catch_up_too: bool = False) -> None:
        self.on = True
        self.folds = 0
        real_fold, real_catch_up = pending_mod.fold, pending_mod.catch_up

        def fold(*args: Any) -> None:
            self.folds += 1
            if self.on:
                raise duckdb.ConversionException("injected: the fold cannot read a pending range")
            real_fold(*args)

        def catch_up(*args: Any) -> None:
            if self.on and catch_up_too:
                raise duckdb.ConversionException("injected: the catch-up fails too")
            real_catch_up(*args)

        monkeypatch.setattr(pending_mod, "fold", fold)
        monkeypatch.setattr(pending_mod, "catch_up", catch_up)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(writer_mod, "FOLD_WHEN_IDLE_S", 3600.0)  # only what the test does folds
    monkeypatch.setattr(writer_mod, "FOLD_AFTER_S", 3600.0)
    s = MetricsStore.open(tmp_path / "robust.duckdb")
    yield s
    s.close()


async def test_a_failing_fold_heals_and_later_groups_and_reports_stay_current(
        store: MetricsStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    fault = FoldFault(monkeypatch)
    await store.writer.submit("acme", rows("GPU-a", 0, 60), T0)  # fresh: its rollup deferred
    assert store.writer.pending_rows == 60
    with caplog.at_level(logging.WARNING, logger="gpufleet.store.writer"):
        # a resend (careful path) needs the rollup current: the fold fails, the catch-up heals
        again = await store.writer.submit("acme", rows("GPU-a", 0, 60), T0)
    assert (again.inserted, again.duplicates) == (0, 60)
    assert fault.folds == 1
    assert store.writer.pending_rows == 0
    assert "caught up from the store instead" in caplog.text
    # every later group lands, fresh or late, and each report is current and exact
    for start in (1800, 3600, 5400):
        await store.writer.submit("acme", rows("GPU-a", start, 60), T0)
        await store.writer.submit("acme", rows("GPU-b", start - 1800, 10), T0)  # late for nobody
        report = await asyncio.to_thread(store.usage_rows, "acme", *DAY, store_pricing())
        assert report == store.chargeback_from_samples("acme", *DAY, store_pricing())
    assert store.sample_count("acme") == 60 * 4 + 10 * 3
    assert_rollup_matches_raw(store, "acme", *DAY)
    assert_consistent(store)


async def test_while_even_the_catch_up_fails_fresh_groups_land_and_reports_refuse_stale_numbers(
        store: MetricsStore, monkeypatch: pytest.MonkeyPatch) -> None:
    fault = FoldFault(monkeypatch, catch_up_too=True)
    await store.writer.submit("acme", rows("GPU-a", 0, 60), T0)
    with pytest.raises(RollupBehindError):  # a late batch needs the rollup: answered alone
        await store.writer.submit("acme", rows("GPU-a", 0, 10), T0)
    with pytest.raises(RollupBehindError):  # a report would be stale: it says so instead
        await asyncio.to_thread(store.usage_rows, "acme", *DAY, store_pricing())
    fresh = await store.writer.submit("acme", rows("GPU-a", 1800, 60), T0)
    assert fresh.inserted == 60  # live agents keep landing meanwhile
    fault.on = False  # the fault passes: the next read folds everything in
    assert store.usage_rows("acme", *DAY, store_pricing()) == \
        store.chargeback_from_samples("acme", *DAY, store_pricing())
    assert store.sample_count("acme") == 120
    assert_consistent(store)


async def test_one_bad_batch_in_a_group_fails_alone(store: MetricsStore,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real = writer_mod.write_fresh

    def refuse_poison(con: duckdb.DuckDBPyConnection, source: str) -> None:
        if "'poison'" in source:  # big batches name their account in the group's SELECT
            raise duckdb.ConstraintException("injected: a value the store refuses")
        real(con, source)

    monkeypatch.setattr(writer_mod, "write_fresh", refuse_poison)
    release = hold_writer(store)  # the three batches queue up and form one group
    tasks = [asyncio.create_task(store.writer.submit(account, rows(f"GPU-{account}", 0, BIG), T0))
             for account in ("acme", "poison", "globex")]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[1], duckdb.ConstraintException)
    assert [r.inserted for r in (results[0], results[2])] == [BIG, BIG]  # type: ignore[union-attr]
    assert store.sample_count("acme") == store.sample_count("globex") == BIG
    assert store.sample_count("poison") == 0
    assert_consistent(store)


def store_pricing() -> Any:
    from gpufleet.server.config import Pricing

    return Pricing()

"""Shared GPUs in the store: identity with workload, fractions, the split, the tail, refusals.

Hand-computed cases on a real DuckDB file; every report is also checked against the
raw-samples computation (the rollup and the raw query must agree).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gpufleet.server.config import Pricing
from gpufleet.server.store import MetricsStore
from gpufleet.server.store.shares import GpuShareError

DAY = date(2026, 3, 10)
T0 = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)
PRICING = Pricing()  # A100 2.00 $/h, 60 s interval, idle < 5 %


def row(minute: float, team: str | None, fraction: float | None = None, *, uuid: str = "GPU-s",
        model: str | None = "m", job: str | None = None, **extra: Any) -> dict[str, Any]:
    sample: dict[str, Any] = {
        "timestamp": T0 + timedelta(minutes=minute), "gpu_index": 0, "gpu_uuid": uuid,
        "power_draw_w": 360.0, "utilization_gpu_pct": 90.0, "utilization_memory_pct": 50.0,
        "temperature_c": 60.0, "memory_used_mb": 1000.0, "gpu_name": "NVIDIA A100-SXM4-80GB",
        "team_id": team, "model_tag": model, "job_id": job, "gpu_fraction": fraction,
    }
    sample.update(extra)
    return sample


def hour(*workloads: tuple[str | None, float | None], **extra: Any) -> list[dict[str, Any]]:
    """60 readings a minute apart (exactly one covered hour), one row per workload each."""
    return [row(m, team, fraction, **extra) for m in range(60) for team, fraction in workloads]


@pytest.fixture
def store(tmp_path: Path):
    st = MetricsStore.open(tmp_path / "shared.duckdb")
    yield st
    st.close()


def put(store: MetricsStore, rows: list[dict[str, Any]], account: str = "acme") -> tuple[int, int]:
    result = store.writer.submit_sync(account, rows, datetime.now(UTC))
    return result.inserted, result.duplicates


def teams(store: MetricsStore, account: str = "acme") -> dict[str, tuple[float, float, float, float]]:
    """Per team: (GPU-hours, kWh, idle GPU-hours, shared GPU-hours); rollup == raw checked."""
    rows = store.usage_rows(account, DAY, DAY, PRICING)
    assert rows == store.chargeback_from_samples(account, DAY, DAY, PRICING)
    report = store.chargeback(account, DAY, DAY, PRICING)
    return {t.team_id: (t.total_gpu_hours, t.energy_kwh, t.idle_gpu_hours, t.shared_gpu_hours)
            for t in report.teams}


def gpu_seconds(store: MetricsStore, account: str = "acme") -> float:
    return sum(r[3] for r in store.raw_usage(account, DAY, DAY, PRICING)) / 1e6


def seconds_by_team(store: MetricsStore, account: str = "acme") -> dict[str, float]:
    """Unrounded covered seconds per team ('' = none) from the rollup, equal to the raw figures."""
    found: dict[str, float] = {}
    for team, _model, _name, covered_us, *_ in store.raw_usage(account, DAY, DAY, PRICING):
        found[team] = found.get(team, 0.0) + covered_us / 1e6
    return found


def test_two_workloads_at_three_quarters_and_a_quarter_split_every_figure(store: MetricsStore) -> None:
    # 60 readings of 360 W, the first 20 idle (2 %); each reports 21,600 J since the last one
    rows = [row(m, team, f, energy_delta_j=21600.0, utilization_gpu_pct=2.0 if m < 20 else 90.0)
            for m in range(60) for team, f in (("a", 0.75), ("b", 0.25))]
    assert put(store, rows) == (120, 0)
    # GPU: 1 h; energy: 59 measured intervals x 21,600 J + the last (no delta yet) 360 W x 60 s
    # = 1,296,000 J = 0.36 kWh; idle: 20 min. a gets 3/4 of each, b 1/4; all of it shared.
    assert teams(store) == {"a": (0.75, 0.27, 0.25, 0.75), "b": (0.25, 0.09, 0.08, 0.25)}
    assert gpu_seconds(store) == pytest.approx(3600.0)
    report = store.chargeback("acme", DAY, DAY, PRICING)
    assert {t.team_id: t.total_cost_usd for t in report.teams} == {"a": 1.50, "b": 0.50}
    assert report.summary.total_cost_usd == 2.00 and report.summary.shared_gpu_hours == 1.00


def test_a_lone_sample_without_a_fraction_is_the_whole_gpu(store: MetricsStore) -> None:
    put(store, hour(("a", None)))
    assert teams(store) == {"a": (1.0, 0.36, 0.0, 0.0)}


def test_samples_without_a_fraction_share_what_the_others_leave_equally(store: MetricsStore) -> None:
    put(store, hour(("a", 0.5), ("b", None), ("c", None)))
    assert {k: v[0] for k, v in teams(store).items()} == {"a": 0.5, "b": 0.25, "c": 0.25}
    assert gpu_seconds(store) == pytest.approx(3600.0)


def test_two_samples_without_fractions_share_the_gpu_equally(store: MetricsStore) -> None:
    put(store, hour(("a", None), ("b", None)))
    assert {k: v[0] for k, v in teams(store).items()} == {"a": 0.5, "b": 0.5}


def test_what_no_workload_claims_is_billed_unattributed(store: MetricsStore) -> None:
    # 0.5 + 0.2 claimed: the 0.3 left is the GPU's too, billed to no team and no model
    put(store, hour(("a", 0.5), ("b", 0.2)))
    assert {k: v[0] for k, v in teams(store).items()} == {"a": 0.5, "b": 0.2, "unattributed": 0.3}
    unclaimed = [r for r in store.usage_rows("acme", DAY, DAY, PRICING) if r.team_id == "unattributed"]
    assert [(r.model_tag, r.gpu_arch, r.shared_gpu_hours) for r in unclaimed] == [("untagged", "A100", 0.3)]
    assert gpu_seconds(store) == pytest.approx(3600.0)
    # a single sample with a fraction below 1 leaves the rest unclaimed too
    put(store, hour(("c", 0.6), uuid="GPU-t"))
    shares = {k: v[0] for k, v in teams(store).items()}
    assert shares["c"] == 0.6 and shares["unattributed"] == 0.3 + 0.4


def test_fractions_within_the_rounding_tolerance_are_billed_as_exactly_one_gpu(store: MetricsStore) -> None:
    put(store, hour(("a", 0.505), ("b", 0.505)))  # 1.01: scaled to 0.5 + 0.5
    assert {k: v[0] for k, v in teams(store).items()} == {"a": 0.5, "b": 0.5}
    assert gpu_seconds(store) == pytest.approx(3600.0)


def test_gpu_readings_that_disagree_count_once_at_their_largest(store: MetricsStore) -> None:
    # the same GPU and time, two rows: one says 100 W and idle with no delta, the other
    # 300 W, busy, 18,000 J since the last reading. One reading: 300 W, busy, 18,000 J.
    rows = []
    for m in range(60):
        rows.append(row(m, "a", 0.5, power_draw_w=100.0, utilization_gpu_pct=1.0))
        rows.append(row(m, "b", 0.5, power_draw_w=300.0, utilization_gpu_pct=80.0, energy_delta_j=18000.0))
    put(store, rows)
    # 59 x 18,000 J + the last interval 300 W x 60 s = 1,080,000 J = 0.3 kWh, half each; none idle
    assert teams(store) == {"a": (0.5, 0.15, 0.0, 0.5), "b": (0.5, 0.15, 0.0, 0.5)}


def test_the_interval_runs_to_the_gpus_next_distinct_time(store: MetricsStore) -> None:
    # 10:00 a+b; 10:01 only c; 10:03 a+b again (gap 2 min); 10:13 c alone (gap capped at 120 s)
    put(store, [row(0, "a", 0.5), row(0, "b", 0.5), row(1, "c"), row(3, "a", 0.5), row(3, "b", 0.5),
                row(13, "c")])
    # a, b: 60 s / 2 + 120 s (capped) / 2 = 90 s each; c: 120 s + 60 s (the last reading)
    assert seconds_by_team(store) == pytest.approx({"a": 90, "b": 90, "c": 180})
    assert {k: v[0] for k, v in teams(store).items()} == {"a": 0.03, "b": 0.03, "c": 0.05}


def test_the_identity_includes_the_workload_and_repeats_are_duplicates(store: MetricsStore) -> None:
    first = [row(0, "a", job="j1"), row(0, "a", job="j2"), row(0, "a", job="j1")]
    assert put(store, first) == (2, 1)  # same GPU, time and team; two jobs; one repeat
    assert put(store, [row(0, "a", job="j1"), row(0, "b")]) == (1, 1)
    assert put(store, [row(0, "a", job="j2")]) == (0, 1)
    assert put(store, [row(0, "a", job="j2", model=None)]) == (1, 0)  # another model: another workload
    # absent parts count as empty: no job and job "" are the same workload
    assert put(store, [row(0, "b", job="")]) == (0, 1)
    stored = store.query("SELECT team_id, coalesce(job_id, '-'), coalesce(model_tag, '-') FROM samples"
                         " ORDER BY ALL")
    assert stored == [("a", "j1", "m"), ("a", "j2", "-"), ("a", "j2", "m"), ("b", "-", "m")]
    # four workloads without fractions at 10:00, the GPU's only reading: 15 s of its 60 s each
    assert seconds_by_team(store) == pytest.approx({"a": 45, "b": 15})


def test_a_shared_tail_is_split_and_a_late_workload_joins_it(store: MetricsStore) -> None:
    put(store, hour(("a", 0.75)))  # the last reading (10:59) is the open tail: 60 s
    assert teams(store)["unattributed"][0] == 0.25
    # another agent reports b's quarter at every minute, 10:59 (the tail's time) included
    assert put(store, hour(("b", 0.25))) == (60, 0)
    assert {k: v[0] for k, v in teams(store).items()} == {"a": 0.75, "b": 0.25}
    tail = store.query("SELECT ts, team_id, share FROM gpu_tail ORDER BY team_id")
    assert tail == [(datetime(2026, 3, 10, 10, 59), "a", 0.75), (datetime(2026, 3, 10, 10, 59), "b", 0.25)]
    # the next reading closes the shared tail: its minute goes 45 s / 15 s
    put(store, [row(60, "c")])
    assert seconds_by_team(store) == pytest.approx({"a": 45 * 60, "b": 15 * 60, "c": 60})


def test_fractions_over_one_in_one_batch_refuse_the_whole_batch(store: MetricsStore) -> None:
    rows = [row(0, "a", 0.6), row(0, "b", 0.3), row(1, "a", 0.6), row(1, "b", 0.5)]
    with pytest.raises(GpuShareError) as refused:
        put(store, rows)
    assert str(refused.value) == (
        "Metric at index 3: gpu_fraction of GPU GPU-s at 2026-03-10T10:01:00Z adds up to 1.1 "
        "(with the metrics at index 2); the rows of one GPU at one time may add up to at most 1")
    assert store.sample_count() == 0


def test_a_later_batch_that_pushes_a_gpus_shares_over_one_is_refused(store: MetricsStore) -> None:
    assert put(store, [row(0, "a", 0.75), row(1, "a", 0.75)]) == (2, 0)
    with pytest.raises(GpuShareError) as refused:
        put(store, [row(1, "b", 0.25), row(0, "c", 0.5)])  # 10:00 would be 1.25
    assert str(refused.value) == (
        "Metric at index 1: gpu_fraction of GPU GPU-s at 2026-03-10T10:00:00Z adds up to 1.25 "
        "(0.75 of it already stored); the rows of one GPU at one time may add up to at most 1")
    assert store.sample_count() == 2  # nothing of the refused batch
    assert put(store, [row(1, "b", 0.25), row(0, "c", 0.25)]) == (2, 0)
    # a resent row is a duplicate, not a second share
    assert put(store, [row(0, "a", 0.75)]) == (0, 1)


async def test_in_one_write_group_only_the_batch_that_goes_over_is_refused(store: MetricsStore) -> None:
    import asyncio
    import threading

    assert put(store, [row(0, "a", 0.5)]) == (1, 0)
    release = threading.Event()
    store.writer.post(lambda _con: release.wait(30))  # queue the three batches behind this
    now = datetime.now(UTC)
    tasks = [asyncio.create_task(store.writer.submit("acme", batch, now)) for batch in (
        [row(0, "b", 0.25), row(2, "b")],  # 0.75 at 10:00: fine
        [row(0, "c", 0.5), row(3, "c")],   # 1.25 with the batch before: refused
        [row(0, "d", 0.25), row(4, "d")],  # 1.0: fine, counted without the refused one
    )]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [(r.inserted, r.duplicates) for r in (results[0], results[2])] == [(2, 0), (2, 0)]
    assert isinstance(results[1], GpuShareError) and "index 0" in str(results[1])
    assert "adds up to 1.25 (0.5 of it already stored)" in str(results[1])
    assert sorted(r[0] for r in store.query("SELECT team_id FROM samples")) == ["a", "b", "b", "d", "d"]


def test_a_store_from_before_shared_gpus_is_migrated_and_rebuilt(tmp_path: Path) -> None:
    import duckdb

    from gpufleet.server.store.schema import MIGRATIONS

    path = tmp_path / "v6.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at TIMESTAMP NOT NULL)")
    # every migration before the one that brought shared GPUs
    before = next(i for i, m in enumerate(MIGRATIONS) if any("gpu_tail" in q for q in m))
    for number, statements in enumerate(MIGRATIONS[:before], start=1):
        for statement in statements:
            con.execute(statement)
        con.execute("INSERT INTO schema_version VALUES (?, now())", [number])
    con.execute("""INSERT INTO samples (account, ts, gpu_index, gpu_uuid, power_draw_w, utilization_gpu_pct,
                       utilization_memory_pct, temperature_c, memory_used_mb, gpu_name, team_id, model_tag,
                       received_at)
                   SELECT 'acme', TIMESTAMP '2026-03-10 10:00:00' + INTERVAL (m) MINUTE, 0, 'GPU-old', 360, 90,
                          50, 60, 1000, 'NVIDIA A100-SXM4-80GB', 'ml', 'm', now()
                   FROM range(60) r(m)""")
    con.execute("""INSERT INTO gpu_last VALUES ('acme', 'GPU-old', TIMESTAMP '2026-03-10 10:59:00',
                   'NVIDIA A100-SXM4-80GB', 'ml', 'm', 360, NULL, 90, now(), NULL)""")
    con.close()
    with MetricsStore.open(path) as st:
        assert teams(st) == {"ml": (1.0, 0.36, 0.0, 0.0)}
        assert st.query("SELECT gpu_uuid, team_id, model_tag, share, unclaimed FROM gpu_tail") == [
            ("GPU-old", "ml", "m", 1.0, False)]
        put(st, [row(60, "ml", uuid="GPU-old"), row(60, "x", uuid="GPU-old")])
        assert {k: v[0] for k, v in teams(st).items()} == {"ml": 1.01, "x": 0.01}

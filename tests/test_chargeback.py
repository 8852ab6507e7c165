"""Chargeback on hand-computed cases: gaps, period edges, missing tags and energy, rounding, isolation."""

from __future__ import annotations

import csv
import io
import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from gpufleet.server.config import Pricing
from gpufleet.server.pricing import gpu_arch
from gpufleet.server.schemas import CSV_COLUMNS
from gpufleet.server.store import MetricsStore, ReportRangeError

DAY = date(2026, 3, 10)
T0 = datetime(2026, 3, 10, tzinfo=UTC)
PRICING = Pricing()  # A100 2.00 $/h, H100 3.50, 60 s interval, 0.12 $/kWh, idle < 5 %


def s(at: datetime, uuid: str = "GPU-a", **extra: object) -> dict[str, object]:
    row: dict[str, object] = {
        "timestamp": at, "gpu_index": 0, "gpu_uuid": uuid, "power_draw_w": 360.0,
        "utilization_gpu_pct": 90.0, "utilization_memory_pct": 50.0, "temperature_c": 60.0,
        "memory_used_mb": 1000.0, "gpu_name": "NVIDIA A100-SXM4-80GB", "team_id": "ml", "model_tag": "m",
    }
    row.update(extra)
    return row


@pytest.fixture
def store(tmp_path: Path):
    st = MetricsStore.open(tmp_path / "cb.duckdb")
    yield st
    st.close()


def put(store: MetricsStore, rows: list[dict[str, object]], account: str = "acme") -> None:
    store.writer.submit_sync(account, rows, datetime.now(UTC))


def seconds(store: MetricsStore, account: str = "acme", day: date = DAY, pricing: Pricing = PRICING) -> float:
    """Unrounded covered seconds of the day, all rows together."""
    return sum(r[3] for r in store.raw_usage(account, day, day, pricing)) / 1e6


def test_each_sample_covers_until_the_next_capped_at_two_intervals(store: MetricsStore) -> None:
    # gaps 60 s, 30 s, then 10 min (capped at 120 s), then the last sample covers 60 s
    times = [T0 + timedelta(hours=1, seconds=x) for x in (0, 60, 90, 690)]
    put(store, [s(t) for t in times])
    assert seconds(store) == 60 + 30 + 120 + 60


def test_period_edges_clip_covered_time(store: MetricsStore) -> None:
    # 23:59:30 the day before covers 60 s: 30 s fall in the period; 23:59:30 on the day covers 60 s
    before = T0 - timedelta(seconds=30)
    put(store, [s(before), s(before + timedelta(seconds=60)), s(T0 + timedelta(days=1) - timedelta(seconds=30)),
                s(T0 + timedelta(days=1) + timedelta(seconds=30))])
    # 30 s (first) + 60 s gap capped at 120: 00:00:30 -> 23:59:30 is a long gap, so 120 s
    # + 30 s of the 23:59:30 sample inside the day; the last one lies after the period
    assert seconds(store) == 30 + 120 + 30
    assert seconds(store, day=DAY - timedelta(days=1)) == 30
    assert seconds(store, day=DAY + timedelta(days=1)) == 30 + 60


def test_missing_team_model_and_energy(store: MetricsStore) -> None:
    rows = [s(T0 + timedelta(minutes=m), team_id=None, model_tag=None) for m in range(60)]
    rows += [s(T0 + timedelta(minutes=m), uuid="GPU-e", energy_delta_j=7200.0) for m in range(60)]
    put(store, rows)
    report = store.chargeback("acme", DAY, DAY, PRICING)
    teams = {t.team_id: t for t in report.teams}
    assert set(teams) == {"unattributed", "ml"}
    assert teams["unattributed"].by_model[0].model_tag == "untagged"
    # 60 samples x 60 s = 1 h each; no energy counter: 360 W x 1 h = 0.36 kWh
    assert teams["unattributed"].total_gpu_hours == 1.0
    assert teams["unattributed"].energy_kwh == 0.36
    # with the counter: each of the 59 closed intervals gets its NEXT sample's 7200 J (the
    # energy consumed since the previous sample); the first sample's delta (time before it,
    # not billed) is not counted; the last sample's interval has no delta yet: 360 W x 60 s.
    assert teams["ml"].energy_kwh == round((59 * 7200 + 360 * 60) / 3.6e6, 3) == 0.124
    assert teams["ml"].energy_cost_usd == round(0.124 * 0.12, 2)
    assert teams["ml"].total_cost_usd == 2.0  # 1 h of A100 at 2.00


def test_idle_hours_and_architectures(store: MetricsStore) -> None:
    rows = [s(T0 + timedelta(minutes=m), utilization_gpu_pct=2.0) for m in range(30)]
    rows += [s(T0 + timedelta(minutes=m), uuid="GPU-h", gpu_name="NVIDIA H100 80GB HBM3") for m in range(30)]
    rows += [s(T0 + timedelta(minutes=m), uuid="GPU-x", gpu_name="Mystery GPU 9000") for m in range(30)]
    put(store, rows)
    team = store.chargeback("acme", DAY, DAY, PRICING).teams[0]
    by_arch = {g.gpu_arch: g for g in team.by_gpu}
    assert set(by_arch) == {"A100", "H100", "Mystery GPU 9000"}
    assert by_arch["A100"].idle_gpu_hours == 0.5 and by_arch["H100"].idle_gpu_hours == 0.0
    assert by_arch["H100"].cost_usd == 1.75 and by_arch["Mystery GPU 9000"].rate == PRICING.default_rate_usd
    assert team.idle_gpu_hours == 0.5


def test_rounded_rows_add_up_to_teams_and_summary(store: MetricsStore) -> None:
    # 7 GPUs x 7 models x 41 s each: every row is 0.08 h (0.0797 rounded), costs round per row
    rows = []
    for g in range(7):
        for m in range(7):
            rows.append(s(T0 + timedelta(hours=g, minutes=m * 5), uuid=f"G{g}-{m}", model_tag=f"m{m}",
                          team_id=f"t{g % 3}"))
    put(store, rows)
    report = store.chargeback("acme", DAY, DAY, Pricing(expected_interval_s=41.0))
    for team in report.teams:
        assert team.total_gpu_hours == round(sum(g.gpu_hours for g in team.by_gpu), 2)
        assert team.total_gpu_hours == round(sum(m.gpu_hours for m in team.by_model), 2)
        assert team.total_cost_usd == round(sum(g.cost_usd for g in team.by_gpu), 2)
        assert team.total_cost_usd == round(sum(m.cost_usd for m in team.by_model), 2)
    assert report.summary.total_cost_usd == round(sum(t.total_cost_usd for t in report.teams), 2)
    assert report.summary.total_gpu_hours == round(sum(t.total_gpu_hours for t in report.teams), 2)
    costs = [t.total_cost_usd for t in report.teams]
    assert costs == sorted(costs, reverse=True)
    csv_rows = list(csv.reader(io.StringIO(store.chargeback_csv("acme", DAY, DAY, Pricing(expected_interval_s=41.0)))))
    assert tuple(csv_rows[0]) == CSV_COLUMNS
    assert csv_rows[0][:6] == ["team_id", "model_tag", "gpu_arch", "gpu_hours", "rate_per_hour_usd", "cost_usd"]
    assert round(sum(float(r[5]) for r in csv_rows[1:]), 2) == report.summary.total_cost_usd


def test_other_accounts_are_never_counted(store: MetricsStore) -> None:
    put(store, [s(T0 + timedelta(minutes=m)) for m in range(60)], account="acme")
    put(store, [s(T0 + timedelta(minutes=m), team_id="spy") for m in range(600)], account="globex")
    report = store.chargeback("acme", DAY, DAY, PRICING)
    assert [t.team_id for t in report.teams] == ["ml"] and report.summary.total_gpu_hours == 1.0
    assert "spy" not in store.chargeback_csv("acme", DAY, DAY, PRICING)


def test_late_and_out_of_order_samples_match_the_raw_computation(store: MetricsStore) -> None:
    rng = random.Random(7)
    times = sorted({T0 - timedelta(hours=3) + timedelta(seconds=rng.randrange(0, 2 * 86400)) for _ in range(400)})
    rows = [s(t, uuid=f"G{i % 3}", team_id=rng.choice(["a", "b", None]), utilization_gpu_pct=rng.choice([1, 50]),
              energy_delta_j=rng.choice([None, 5000.0])) for i, t in enumerate(times)]
    rng.shuffle(rows)
    for start in range(0, len(rows), 37):  # batches arrive in random order, some resent
        put(store, rows[start:start + 37])
        if start % 3 == 0:
            put(store, rows[start:start + 37])
    for day in (DAY - timedelta(days=1), DAY, DAY + timedelta(days=1)):
        assert store.usage_rows("acme", day, day, PRICING) == store.chargeback_from_samples("acme", day, day, PRICING)
    span = store.usage_rows("acme", DAY - timedelta(days=1), DAY + timedelta(days=1), PRICING)
    assert span == store.chargeback_from_samples("acme", DAY - timedelta(days=1), DAY + timedelta(days=1), PRICING)


def test_other_interval_falls_back_to_raw_samples(store: MetricsStore) -> None:
    put(store, [s(T0 + timedelta(minutes=2 * m)) for m in range(30)])
    # with a 60 s interval each 120 s gap is billed in full: 29 x 120 + 60
    assert seconds(store) == 29 * 120 + 60
    # with a 30 s interval the cap is 60 s: 29 x 60 + 30
    assert seconds(store, pricing=Pricing(expected_interval_s=30.0)) == 29 * 60 + 30


def test_bad_ranges_raise(store: MetricsStore) -> None:
    with pytest.raises(ReportRangeError):
        store.chargeback("acme", DAY, DAY - timedelta(days=1), PRICING)
    with pytest.raises(ReportRangeError):
        store.chargeback("acme", DAY, DAY + timedelta(days=366), PRICING)


def test_csv_text_cells_never_start_a_formula_and_numbers_stay_numbers(store: MetricsStore) -> None:
    hostile = ["=HYPERLINK(\"http://x\")", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)", "\tx", "\rx"]
    rows = [s(T0 + timedelta(minutes=i), uuid=f"G{i}", team_id=text, model_tag=text, gpu_name=text)
            for i, text in enumerate(hostile)]
    rows.append(s(T0, uuid="G-plain", team_id="a=b", model_tag="m-1"))
    rows.append(s(T0, uuid="G-split", team_id="x\ry", model_tag='q,"z"\n'))  # must stay one row
    put(store, rows)
    text = store.chargeback_csv("acme", DAY, DAY, PRICING)
    lines = list(csv.reader(io.StringIO(text, newline="")))[1:]
    assert len(lines) == len(hostile) + 2 and all(len(r) == len(CSV_COLUMNS) for r in lines)
    cells = {(r[0], r[1], r[2]) for r in lines}
    # the architecture is derived from gpu_name (stripped: "\tx" is x), then neutralised too
    arch = {t: ("'" + gpu_arch(t) if gpu_arch(t) == t else gpu_arch(t)) for t in hostile}
    assert {a for a in arch.values() if a.startswith("'")} == {"'" + t for t in hostile[:4]}
    assert cells == ({("'" + t, "'" + t, arch[t]) for t in hostile}
                     | {("a=b", "m-1", "A100"), ("x\ry", 'q,"z"\n', "A100")})
    for line in lines:
        for number in line[3:]:
            float(number)  # every figure is a plain number, never quoted or prefixed
            assert not number.startswith("'")
    # the JSON report keeps the names exactly as sent
    assert {t.team_id for t in store.chargeback("acme", DAY, DAY, PRICING).teams} == \
        {*hostile, "a=b", "x\ry"}


def test_an_intervals_energy_goes_where_its_gpu_hours_go(store: MetricsStore) -> None:
    # 10:00 team a; 10:01 team b reports the 6000 J used since 10:00 (under a's job);
    # 10:02 team b reports 9000 J used since 10:01; then a gap of 10 min (capped at 120 s)
    # closed by a sample whose delta of 90000 J spans mostly unbilled time: power x time.
    at = T0 + timedelta(hours=10)
    put(store, [
        s(at, team_id="a", energy_delta_j=111.0),
        s(at + timedelta(minutes=1), team_id="b", energy_delta_j=6000.0),
        s(at + timedelta(minutes=2), team_id="b", energy_delta_j=9000.0, power_draw_w=100.0),
        s(at + timedelta(minutes=12), team_id="c", energy_delta_j=90000.0, power_draw_w=200.0),
    ])
    teams = {t.team_id: t for t in store.chargeback("acme", DAY, DAY, PRICING).teams}
    assert {k: t.total_gpu_hours for k, t in teams.items()} == {
        "a": round(60 / 3600, 2), "b": round(180 / 3600, 2), "c": round(60 / 3600, 2)}
    kwh = {k: t.energy_kwh for k, t in teams.items()}
    assert kwh == {
        "a": round(6000 / 3.6e6, 3),                   # [10:00, 10:01): the 10:01 delta
        "b": round((9000 + 100 * 120) / 3.6e6, 3),     # [10:01, 10:02) + capped gap at 100 W
        "c": round(200 * 60 / 3.6e6, 3),               # last sample: one interval at 200 W
    }
    raw = {r.team_id: r.energy_kwh for r in store.chargeback_from_samples("acme", DAY, DAY, PRICING)}
    assert raw == kwh


def test_a_rollup_built_by_the_older_energy_rule_is_rebuilt_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    with MetricsStore.open(path) as st:
        put(st, [s(T0 + timedelta(minutes=m), energy_delta_j=7200.0) for m in range(10)])
        expected = st.chargeback("acme", DAY, DAY, PRICING).summary.energy_kwh

    def tamper(con_sql: str) -> None:
        with MetricsStore.open(path) as st:
            st.writer.call(lambda con: con.execute(con_sql))
            st.writer.call(lambda con: con.execute("UPDATE usage_daily SET energy_j = 1e9"))

    tamper("SELECT 1")  # same rule: the rollup is trusted as it is
    with MetricsStore.open(path) as st:
        assert st.chargeback("acme", DAY, DAY, PRICING).summary.energy_kwh > 200
    tamper("COMMENT ON TABLE usage_daily IS NULL")  # as a store from before the rule was kept
    with MetricsStore.open(path) as st:
        assert st.chargeback("acme", DAY, DAY, PRICING).summary.energy_kwh == expected


def test_time_before_1970_lands_on_its_own_utc_day(store: MetricsStore) -> None:
    # Negative epoch values: a truncating modulo would put 23:58 on the wrong side of midnight.
    midnight = datetime(1969, 12, 31, tzinfo=UTC)
    days = (date(1969, 12, 30), date(1969, 12, 31))
    first = [s(midnight - timedelta(seconds=120) + timedelta(seconds=30 * i)) for i in range(6)]
    late = s(midnight - timedelta(seconds=75), uuid="GPU-a")  # out of order: recomputed from raw
    put(store, first)
    put(store, [late, *[s(midnight + timedelta(seconds=60 + 30 * i)) for i in range(4)]])
    assert seconds(store, day=days[0]) == 120.0  # 23:58:00 to midnight
    for first_day, last_day in ((days[0], days[0]), (days[1], days[1]), days):
        rolled = store.usage_rows("acme", first_day, last_day, PRICING)
        assert rolled, (first_day, last_day)
        assert rolled == store.chargeback_from_samples("acme", first_day, last_day, PRICING)

"""The sample month: deterministic, idempotent, attributed, with alive/stale/offline hosts."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from server.config import Pricing
from server.fleet import default_fleet
from server.sample import load_sample_month
from server.store import MetricsStore


def test_sample_month_loads_once_with_figures_and_hosts(tmp_path: Path) -> None:
    end = date(2026, 3, 31)
    now = datetime(2026, 4, 1, tzinfo=UTC)
    gpus = sum(len(n.gpus) for n in default_fleet().nodes)
    with MetricsStore.open(tmp_path / "s.duckdb") as store:
        inserted = load_sample_month(store, "demo", end=end, now=now)
        assert inserted == gpus * 30 * 24 * 60
        assert load_sample_month(store, "demo", end=end, now=now) == 0
        assert store.sample_count("other") == 0
        report = store.chargeback("demo", date(2026, 3, 2), end, Pricing())
        teams = {t.team_id for t in report.teams}
        assert {"ml-infra", "inference", "research", "data-science"} <= teams
        assert report.summary.total_gpu_hours == gpus * 30 * 24
        assert 0 < report.summary.idle_gpu_hours < report.summary.total_gpu_hours
        assert store.usage_rows("demo", date(2026, 3, 2), end, Pricing()) == \
            store.chargeback_from_samples("demo", date(2026, 3, 2), end, Pricing())
        hosts = store.list_hosts("demo", now + timedelta(seconds=5), 300)
        statuses = sorted(h.status for h in hosts)
        assert statuses.count("stale") == 1 and statuses.count("offline") == 1
        assert len(hosts) == len(default_fleet().nodes)
        assert all(h.last_sample_at is not None for h in hosts)


def test_sample_month_is_deterministic(tmp_path: Path) -> None:
    end, now = date(2026, 3, 31), datetime(2026, 4, 1, tzinfo=UTC)
    sums = []
    for name in ("a", "b"):
        with MetricsStore.open(tmp_path / f"{name}.duckdb") as store:
            load_sample_month(store, "demo", end=end, now=now)
            # an order-independent, exact fingerprint of every row
            sums.append(store.query(
                "SELECT sum(hash(gpu_uuid, ts, power_draw_w, utilization_gpu_pct, energy_delta_j, team_id,"
                " model_tag, job_id)), count(*) FROM samples"))
    assert sums[0] == sums[1]

"""The sample data: last month and this month so far, deterministic, idempotent, coherent hosts."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from gpufleet.server.config import Pricing
from gpufleet.server.fleet import NodeSpec, default_fleet
from gpufleet.server.sample import load_sample_month
from gpufleet.server.store import MetricsStore

FLEET = default_fleet()
GPUS = sum(len(n.gpus) for n in FLEET.nodes)


def rows_a_minute(node: NodeSpec) -> int:
    """One sample per GPU, and one more for every further job on a shared GPU."""
    return sum(max(1, len(FLEET.jobs_for(node.name, i))) for i in range(len(node.gpus)))


ROWS = sum(rows_a_minute(n) for n in FLEET.nodes)
STALE_NODE, OFFLINE_NODE = FLEET.nodes[-2], FLEET.nodes[-1]
# minutes without samples at the end: the stale host 3 heartbeats (15 min), the offline one 12 (1 h)
SILENT_SAMPLES = rows_a_minute(STALE_NODE) * 15 + rows_a_minute(OFFLINE_NODE) * 60
MARCH_END, MARCH_NOW = date(2026, 3, 31), datetime(2026, 4, 1, tzinfo=UTC)
DEMO_NOW = datetime(2026, 11, 22, 8, 48, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def march(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MetricsStore, int]]:
    """A store loaded up to March 31, and the rows that load inserted."""
    with MetricsStore.open(tmp_path_factory.mktemp("march") / "s.duckdb") as store:
        yield store, load_sample_month(store, "demo", end=MARCH_END, now=MARCH_NOW)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MetricsStore, int]]:
    """A store loaded as the console's demo does on November 22 at 08:48, and the rows inserted."""
    with MetricsStore.open(tmp_path_factory.mktemp("demo") / "s.duckdb") as store:
        yield store, load_sample_month(store, "demo", now=DEMO_NOW)


def _days(store: MetricsStore, account: str) -> dict[date, tuple[int, int]]:
    """Per UTC day: (GPUs that reported, samples)."""
    rows = store.query("SELECT ts::DATE, count(DISTINCT gpu_uuid), count(*) FROM samples"
                       " WHERE account = ? GROUP BY ALL", [account])
    return {d: (g, n) for d, g, n in rows}


def _cost_per_day(store: MetricsStore, start: date, end: date, hours: float) -> float:
    return store.chargeback("demo", start, end, Pricing()).summary.total_cost_usd / (hours / 24)


def test_sample_covers_last_month_and_this_month_to_the_given_day(
        march: tuple[MetricsStore, int]) -> None:
    store, inserted = march
    end, now = MARCH_END, MARCH_NOW
    # February (28 days) and March (31), every GPU every minute, less the silent hosts' tails
    assert ROWS == GPUS + 1  # inf-l40s-01's GPU 3: two teams' models on one GPU
    assert inserted == ROWS * 59 * 24 * 60 - SILENT_SAMPLES
    assert load_sample_month(store, "demo", end=end, now=now) == 0
    assert store.sample_count("other") == 0
    days = _days(store, "demo")
    assert sorted(days) == [date(2026, 2, 1) + timedelta(days=i) for i in range(59)]
    assert all(days[d] == (GPUS, ROWS * 1440) for d in days if d != end)
    assert days[end] == (GPUS, ROWS * 1440 - SILENT_SAMPLES)
    february = store.chargeback("demo", date(2026, 2, 1), date(2026, 2, 28), Pricing())
    this_month = store.chargeback("demo", date(2026, 3, 1), end, Pricing())
    assert {"ml-infra", "inference", "research", "data-science"} <= {t.team_id for t in this_month.teams}
    assert {t.team_id for t in february.teams} == {t.team_id for t in this_month.teams}
    assert february.summary.total_gpu_hours == GPUS * 28 * 24  # a shared GPU still bills 24 h a day
    # inf-l40s-01's GPU 3: data-science's bge-embed and inference's llama3.2-3b share it all month
    shared = {t.team_id: t.shared_gpu_hours for t in february.teams if t.shared_gpu_hours}
    assert set(shared) == {"data-science", "inference"}
    # (a minute when one model's share rounds to 0 is the other's whole GPU, not shared)
    assert 0.99 * 28 * 24 < sum(shared.values()) <= 28 * 24
    fractions = store.query("SELECT min(gpu_fraction), max(gpu_fraction) FROM samples")
    assert fractions[0][0] > 0 and fractions[0][1] <= 1
    assert shared["data-science"] > shared["inference"]  # bge-embed runs around the clock
    assert 0 < this_month.summary.idle_gpu_hours < this_month.summary.total_gpu_hours
    # the same load every day: cost per day within 1 % between the two months
    feb_day = february.summary.total_cost_usd / 28
    mar_day = this_month.summary.total_cost_usd / 31
    assert abs(feb_day / mar_day - 1) < 0.01
    assert store.usage_rows("demo", date(2026, 3, 2), end, Pricing()) == \
        store.chargeback_from_samples("demo", date(2026, 3, 2), end, Pricing())


def test_demo_mid_month_has_a_whole_last_month_and_this_month_so_far(
        demo: tuple[MetricsStore, int]) -> None:
    (store, inserted), now = demo, DEMO_NOW
    minutes = (31 + 21) * 1440 + 8 * 60 + 49  # October, November 1-21, and today 00:00-08:48
    assert inserted == ROWS * minutes - SILENT_SAMPLES
    assert load_sample_month(store, "demo", now=now + timedelta(minutes=5)) == 0
    days = _days(store, "demo")
    assert min(days) == date(2026, 10, 1) and max(days) == now.date()
    assert len(days) == 31 + 22 and all(gpus == GPUS for gpus, _ in days.values())
    last_month = _cost_per_day(store, date(2026, 10, 1), date(2026, 10, 31), 31 * 24)
    this_month = _cost_per_day(store, date(2026, 11, 1), now.date(), 21 * 24 + 8.8)
    assert last_month > 0 and abs(this_month / last_month - 1) < 0.02


def test_silent_hosts_stopped_sampling_when_they_stopped_heartbeating(
        demo: tuple[MetricsStore, int]) -> None:
    store, now = demo[0], DEMO_NOW
    hosts = {h.hostname: h for h in store.list_hosts("demo", now, 300)}
    assert set(hosts) == {n.name for n in FLEET.nodes}
    assert hosts[OFFLINE_NODE.name].status == "offline"
    assert hosts[STALE_NODE.name].status == "stale"
    assert sorted(h.status for h in hosts.values()).count("alive") == len(FLEET.nodes) - 2
    for host in hosts.values():
        assert host.last_sample_at is not None
        # the last sample and the last heartbeat arrived within a minute of each other
        gap = host.last_heartbeat - host.last_sample_at
        assert abs(gap) <= timedelta(seconds=60), (host.hostname, gap)
    offline = hosts[OFFLINE_NODE.name]
    assert timedelta(minutes=59) < now - offline.last_sample_at < timedelta(minutes=62)
    assert now - hosts[FLEET.nodes[0].name].last_sample_at < timedelta(minutes=2)


def test_old_sample_data_is_topped_up_to_now(tmp_path: Path) -> None:
    first = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    later = first + timedelta(days=40)
    with MetricsStore.open(tmp_path / "s.duckdb") as store:
        before = load_sample_month(store, "demo", now=first)
        added = load_sample_month(store, "demo", now=later)
        assert added > 0
        days = _days(store, "demo")
        # February 1 to April 19: no day missing, every GPU on every day
        assert len(days) == (later.date() - date(2026, 2, 1)).days + 1
        assert all(gpus == GPUS for gpus, _ in days.values())
        assert store.sample_count("demo") == before + added
        hosts = {h.hostname: h for h in store.list_hosts("demo", later, 300)}
        assert later - hosts[OFFLINE_NODE.name].last_heartbeat > timedelta(minutes=59)
        assert later - hosts[OFFLINE_NODE.name].last_sample_at > timedelta(minutes=59)


def test_sample_data_is_deterministic(tmp_path: Path, march: tuple[MetricsStore, int]) -> None:
    # an order-independent, exact fingerprint of every row
    fingerprint = ("SELECT sum(hash(gpu_uuid, ts, power_draw_w, utilization_gpu_pct, energy_delta_j,"
                   " team_id, model_tag, job_id)), count(*) FROM samples")
    with MetricsStore.open(tmp_path / "again.duckdb") as store:
        load_sample_month(store, "demo", end=MARCH_END, now=MARCH_NOW)
        assert store.query(fingerprint) == march[0].query(fingerprint)


def test_live_hosts_are_never_the_silent_ones(tmp_path: Path) -> None:
    live = [n.name for n in FLEET.nodes[:4]]  # the console's default demo nodes
    now = DEMO_NOW
    with MetricsStore.open(tmp_path / "s.duckdb") as store:
        load_sample_month(store, "demo", end=date(2026, 10, 2), now=now, live_hosts=live)
        hosts = {h.hostname: h for h in store.list_hosts("demo", datetime(2026, 10, 3, tzinfo=UTC), 300)}
    assert [h for h in hosts if hosts[h].status != "alive"] == [OFFLINE_NODE.name]
    assert hosts[OFFLINE_NODE.name].status == "offline"
    for name in live:
        assert datetime(2026, 10, 3, tzinfo=UTC) - hosts[name].last_sample_at < timedelta(minutes=1)


def test_sample_data_gpus_are_the_live_simulated_fleets_gpus() -> None:
    """The demo's live samples continue the sample data's GPUs instead of starting new ones."""
    from gpufleet.sample_data.generate import gpu_rows
    from gpufleet.server.gpu.simulated import SimulatedBackend

    fleet = default_fleet()
    stored = {(row[0], row[1]): row[2] for row in gpu_rows(fleet, minutes=1)}
    live = {}
    for node in fleet.nodes:
        snapshot = SimulatedBackend(node.name, fleet=fleet).snapshot()
        live.update({(node.name, gpu.index): gpu.uuid for gpu in snapshot.gpus})
    assert stored == live
    assert len(set(stored.values())) == len(stored)

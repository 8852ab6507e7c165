"""Property: for shared GPUs, the rollup report == the raw-samples report == a Python reference.

Hypothesis draws a few GPUs' readings around a UTC midnight, each reading one to three
workloads with or without fractions (and GPU-level figures that may disagree), sends
them in shuffled batches with resends, and compares the unrounded sums of every day
and of the span with an independent Python implementation of docs/chargeback.md.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpufleet.server.config import Pricing
from gpufleet.server.store import MetricsStore

START = datetime(2026, 3, 10, 23, 50, tzinfo=UTC)  # readings cross midnight into 03-11
DAYS = (date(2026, 3, 10), date(2026, 3, 11))
PRICING = Pricing()
INTERVAL_US = 60_000_000
CAP_US = 2 * INTERVAL_US
NAMES = {"GPU-0": "NVIDIA A100-SXM4-80GB", "GPU-1": "NVIDIA H100 80GB HBM3"}
_accounts = itertools.count()

# one workload of a reading: (team, model, job, fraction or None)
workload = st.tuples(st.sampled_from(["a", "b", "c", None]), st.sampled_from(["m1", "m2", None]),
                     st.sampled_from(["j1", "j2", None]),
                     st.one_of(st.none(), st.sampled_from([0.1, 0.25, 0.3, 0.5, 0.505, 0.75, 1.0])))
reading = st.tuples(
    st.integers(0, 1),                                       # GPU
    st.integers(0, 30),                                      # minutes after START
    st.integers(0, 59),                                      # and seconds
    st.lists(workload, min_size=1, max_size=3),
    st.lists(st.tuples(st.sampled_from([100.0, 250.0, 400.0]),       # per row: power,
                       st.sampled_from([1.0, 60.0]),                  # utilization,
                       st.sampled_from([None, 9000.0, 30000.0])),     # energy delta
             min_size=3, max_size=3),
)


def _rows(readings: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """The samples of the drawn readings: distinct workloads per reading, fractions capped at 1.01."""
    rows: dict[tuple[str, datetime, tuple[str, str, str]], dict[str, Any]] = {}
    drawn: set[tuple[str, datetime]] = set()
    for gpu, minute, second, loads, figures in readings:
        uuid = f"GPU-{gpu}"
        at = START + timedelta(minutes=minute, seconds=second)
        if (uuid, at) in drawn:  # the same GPU and time drawn twice: the first reading only
            continue
        drawn.add((uuid, at))
        claimed = sum(f for _t, _m, _j, f in loads if f is not None)
        scale = 1.0 if claimed <= 1.01 else 1.0 / claimed  # keep the drawn batch acceptable
        for (team, model, job, fraction), (power, util, energy) in zip(loads, figures, strict=False):
            identity = (uuid, at, (job or "", team or "", model or ""))
            if identity in rows:  # a workload drawn twice in one reading
                continue
            rows[identity] = {
                "timestamp": at, "gpu_index": gpu, "gpu_uuid": uuid, "power_draw_w": power,
                "utilization_gpu_pct": util, "utilization_memory_pct": 10.0, "temperature_c": 50.0,
                "memory_used_mb": 100.0, "gpu_name": NAMES[uuid], "team_id": team, "model_tag": model,
                "job_id": job, "energy_delta_j": energy,
                "gpu_fraction": None if fraction is None else round(fraction * scale, 6),
            }
    return list(rows.values())


def reference(rows: list[dict[str, Any]], p0: int, p1: int) -> dict[tuple[str, str, str], list[float]]:
    """docs/chargeback.md in plain Python: (team, model, gpu_name) -> covered, energy, idle, shared µs."""
    us = {id(r): int((r["timestamp"] - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))
          for r in rows}
    by_gpu: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_gpu[r["gpu_uuid"]][us[id(r)]].append(r)
    out: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    for readings in by_gpu.values():
        times = sorted(readings)
        for i, t in enumerate(times):
            group = readings[t]
            power = max(r["power_draw_w"] for r in group)
            util = max(r["utilization_gpu_pct"] for r in group)
            nxt = times[i + 1] if i + 1 < len(times) else None
            full = min(nxt - t, CAP_US) if nxt is not None else INTERVAL_US
            deltas = [r["energy_delta_j"] for r in readings[nxt] if r["energy_delta_j"] is not None] if nxt else []
            measured = max(deltas) if deltas and nxt - t <= CAP_US else None
            part = min(t + full, p1) - max(t, p0)
            if part <= 0:
                continue
            energy = (measured * part / full) if measured is not None else power * part / 1e6
            fixed = sum(r["gpu_fraction"] for r in group if r["gpu_fraction"] is not None)
            free = sum(1 for r in group if r["gpu_fraction"] is None)
            shares = [((r["team_id"] or "", r["model_tag"] or "", r["gpu_name"]),
                       r["gpu_fraction"] / max(1.0, fixed) if r["gpu_fraction"] is not None
                       else max(0.0, 1.0 - fixed) / free) for r in group]
            if free == 0 and fixed < 1:
                shares.append((("", "", min(r["gpu_name"] for r in group)), 1.0 - fixed))
            for key, share in shares:
                if share <= 0:
                    continue
                acc = out[key]
                acc[0] += part * share
                acc[1] += energy * share
                acc[2] += part * share if util < PRICING.idle_utilization_pct else 0.0
                acc[3] += part * share if share < 1 else 0.0
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsStore]:
    with MetricsStore.open(tmp_path_factory.mktemp("prop") / "p.duckdb") as st_:
        yield st_


def _bounds(first: date, last: date) -> tuple[int, int]:
    base = date(1970, 1, 1)
    return (first - base).days * 86_400_000_000, ((last - base).days + 1) * 86_400_000_000


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(readings=st.lists(reading, min_size=1, max_size=14), seed=st.integers(0, 2**16))
def test_shared_gpu_rollup_equals_raw_equals_reference(store: MetricsStore, readings: list[Any],
                                                       seed: int) -> None:
    account = f"acct-{next(_accounts)}"  # one store for every example, an account each
    rows = _rows(readings)
    rng = random.Random(seed)
    order = rows[:]
    rng.shuffle(order)
    size = rng.randint(1, max(1, len(order)))
    for start in range(0, len(order), size):  # shuffled batches, some sent twice
        store.writer.submit_sync(account, order[start:start + size], datetime.now(UTC))
        if rng.random() < 0.3:
            again = store.writer.submit_sync(account, order[start:start + size], datetime.now(UTC))
            assert again.inserted == 0
    assert store.sample_count(account) == len(rows)
    for first, last in [(DAYS[0], DAYS[0]), (DAYS[1], DAYS[1]), DAYS]:
        expected = reference(rows, *_bounds(first, last))
        got = {(t, m, n): [c, e, i, s] for t, m, n, c, e, i, s in store.raw_usage(account, first, last, PRICING)}
        for key in set(expected) | set(got):
            assert got.get(key, [0.0] * 4) == pytest.approx(expected.get(key, [0.0] * 4), rel=1e-9, abs=1e-3), key
        if (first, last) == DAYS:  # the raw-samples query (another SQL path) on the span
            assert store.usage_rows(account, first, last, PRICING) == \
                store.chargeback_from_samples(account, first, last, PRICING)
        # per-GPU totals are what the GPUs alone would be billed: every distinct time once
        total = sum(v[0] for v in got.values())
        alone = reference([{**r, "team_id": "x", "model_tag": "y", "job_id": None, "gpu_fraction": None}
                           for r in _first_per_time(rows)], *_bounds(first, last))
        assert total == pytest.approx(sum(v[0] for v in alone.values()), rel=1e-9, abs=1e-3)


def _first_per_time(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per GPU and time, carrying the reading's largest figures (the GPU unshared)."""
    merged: dict[tuple[str, datetime], dict[str, Any]] = {}
    for r in rows:
        key = (r["gpu_uuid"], r["timestamp"])
        m = merged.setdefault(key, dict(r))
        m["power_draw_w"] = max(m["power_draw_w"], r["power_draw_w"])
        m["utilization_gpu_pct"] = max(m["utilization_gpu_pct"], r["utilization_gpu_pct"])
        deltas = [d for d in (m["energy_delta_j"], r["energy_delta_j"]) if d is not None]
        m["energy_delta_j"] = max(deltas) if deltas else None
    return list(merged.values())

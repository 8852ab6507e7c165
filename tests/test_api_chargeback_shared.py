"""A shared GPU over HTTP: two teams at 0.75 / 0.25 on one GPU and a third alone, by hand.

The GPUs report for one hour (60 readings a minute apart: 59 closed minutes plus the
last one's interval). The shared A100 draws 300 W and reports 18,000 J per minute, its
first 20 minutes idle (2 %); the H100 is busy at 500 W without an energy counter.

| team | model | GPU | GPU-h | $/h | cost | kWh | idle GPU-h | shared GPU-h |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
| search | bge-embed | A100 | 0.75 | 2.00 | 1.50 | 0.225 | 0.25 | 0.75 |
| vision | yolo-v9 | A100 | 0.25 | 2.00 | 0.50 | 0.075 | 0.08 | 0.25 |
| ml-infra | llama3-70b | H100 | 1.00 | 3.50 | 3.50 | 0.500 | 0.00 | 0.00 |

A100 energy: 59 x 18,000 J + the last minute at 300 W x 60 s = 1,080,000 J = 0.3 kWh, split
3:1; H100: 500 W x 1 h = 0.5 kWh. Energy cost at 0.12 $/kWh: 0.03, 0.01, 0.06.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.api_server import store_app

HOUR = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
PERIOD = {"from": "2026-03-01", "to": "2026-03-31"}


def reading(minute: int, uuid: str, team: str, model: str, fraction: float | None,
            **gpu: Any) -> dict[str, Any]:
    sample = {
        "timestamp": (HOUR + timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "gpu_index": 0, "gpu_uuid": uuid, "utilization_memory_pct": 40, "temperature_c": 60,
        "memory_used_mb": 20000, "team_id": team, "model_tag": model, **gpu,
    }
    if fraction is not None:
        sample["gpu_fraction"] = fraction
        sample["gpu_fraction_basis"] = "sm_utilization"
    return sample


def shared_gpu(team: str, model: str, fraction: float) -> list[dict[str, Any]]:
    return [reading(m, "GPU-shared", team, model, fraction, gpu_name="NVIDIA A100 80GB",
                    power_draw_w=300.0, energy_delta_j=18000.0,
                    utilization_gpu_pct=2 if m < 20 else 85) for m in range(60)]


def lone_gpu() -> list[dict[str, Any]]:
    return [reading(m, "GPU-alone", "ml-infra", "llama3-70b", None, gpu_name="NVIDIA H100 80GB HBM3",
                    power_draw_w=500.0, utilization_gpu_pct=95) for m in range(60)]


EXPECTED_TEAMS = [  # team, cost, GPU-h, kWh, energy cost, idle, shared, by_gpu, by_model
    ("ml-infra", 3.50, 1.00, 0.5, 0.06, 0.0, 0.0, [("H100", 1.0, 3.5, 3.5)], [("llama3-70b", 1.0, 3.5)]),
    ("search", 1.50, 0.75, 0.225, 0.03, 0.25, 0.75, [("A100", 0.75, 2.0, 1.5)], [("bge-embed", 0.75, 1.5)]),
    ("vision", 0.50, 0.25, 0.075, 0.01, 0.08, 0.25, [("A100", 0.25, 2.0, 0.5)], [("yolo-v9", 0.25, 0.5)]),
]
EXPECTED_CSV = [
    ["team_id", "model_tag", "gpu_arch", "gpu_hours", "rate_per_hour_usd", "cost_usd", "energy_kwh",
     "idle_gpu_hours", "shared_gpu_hours"],
    ["ml-infra", "llama3-70b", "H100", "1.00", "3.50", "3.50", "0.500", "0.00", "0.00"],
    ["search", "bge-embed", "A100", "0.75", "2.00", "1.50", "0.225", "0.25", "0.75"],
    ["vision", "yolo-v9", "A100", "0.25", "2.00", "0.50", "0.075", "0.08", "0.25"],
]


async def check_report(srv: Any) -> None:
    response = await srv.http.get("/v1/chargeback/report", params=PERIOD, headers=srv.auth("read"))
    assert response.status_code == 200, response.text
    body = response.json()
    got = [(t["team_id"], t["total_cost_usd"], t["total_gpu_hours"], t["energy_kwh"], t["energy_cost_usd"],
            t["idle_gpu_hours"], t["shared_gpu_hours"],
            [(g["gpu_arch"], g["gpu_hours"], g["rate"], g["cost_usd"]) for g in t["by_gpu"]],
            [(m["model_tag"], m["gpu_hours"], m["cost_usd"]) for m in t["by_model"]]) for t in body["teams"]]
    assert got == EXPECTED_TEAMS
    assert body["summary"] == {"total_cost_usd": 5.5, "total_gpu_hours": 2.0, "energy_kwh": 0.8,
                               "energy_cost_usd": 0.1, "idle_gpu_hours": 0.33, "shared_gpu_hours": 1.0}
    assert body["teams"][1]["by_gpu"][0]["shared_gpu_hours"] == 0.75
    assert body["teams"][2]["by_model"][0]["shared_gpu_hours"] == 0.25
    response = await srv.http.get("/v1/chargeback/report", params={**PERIOD, "format": "csv"},
                                  headers=srv.auth("read"))
    assert list(csv.reader(io.StringIO(response.text))) == EXPECTED_CSV


async def test_two_teams_on_one_gpu_and_a_third_alone_in_one_batch(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        # the agent's way: at every minute, one row per workload of the shared GPU
        rows = [r for pair in zip(shared_gpu("search", "bge-embed", 0.75),
                                  shared_gpu("vision", "yolo-v9", 0.25), strict=True) for r in pair]
        response = await srv.http.post("/v1/metrics/ingest", json=rows + lone_gpu(),
                                       headers=srv.auth("ingest"))
        assert response.json() == {"success": True, "inserted": 180, "duplicates": 0,
                                   "message": "Successfully ingested 180 metrics"}
        await check_report(srv)


async def test_the_same_split_when_each_workload_comes_in_its_own_batches(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        headers = srv.auth("ingest")
        for batch in (shared_gpu("search", "bge-embed", 0.75)[:30], lone_gpu(),
                      shared_gpu("vision", "yolo-v9", 0.25), shared_gpu("search", "bge-embed", 0.75)[30:],
                      shared_gpu("vision", "yolo-v9", 0.25)[:10]):  # the last one resent
            response = await srv.http.post("/v1/metrics/ingest", json=batch, headers=headers)
            assert response.status_code == 200, response.text
        assert response.json()["duplicates"] == 10
        await check_report(srv)


async def test_a_gpu_over_one_is_a_400_naming_the_gpu_and_the_time(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        headers = srv.auth("ingest")
        over = shared_gpu("search", "bge-embed", 0.75)[:2] + shared_gpu("vision", "yolo-v9", 0.5)[1:2]
        response = await srv.http.post("/v1/metrics/ingest", json=over, headers=headers)
        assert response.status_code == 400
        assert response.json() == {"error": (
            "Metric at index 2: gpu_fraction of GPU GPU-shared at 2026-03-02T10:01:00Z adds up to 1.25 "
            "(with the metrics at index 1); the rows of one GPU at one time may add up to at most 1")}
        # stored by an earlier batch: a later one that pushes the sum over 1 is refused whole
        response = await srv.http.post("/v1/metrics/ingest", json=over[:2], headers=headers)
        assert response.json()["inserted"] == 2
        later = lone_gpu()[:3] + shared_gpu("vision", "yolo-v9", 0.5)[:1]
        response = await srv.http.post("/v1/metrics/ingest", json=later, headers=headers)
        assert response.status_code == 400
        assert response.json() == {"error": (
            "Metric at index 3: gpu_fraction of GPU GPU-shared at 2026-03-02T10:00:00Z adds up to 1.25 "
            "(0.75 of it already stored); the rows of one GPU at one time may add up to at most 1")}
        report = await srv.http.get("/v1/chargeback/report", params=PERIOD, headers=srv.auth("read"))
        assert {t["team_id"] for t in report.json()["teams"]} == {"search", "unattributed"}


@pytest.mark.parametrize(("field", "value", "text"), [
    ("gpu_fraction", 0, "gpu_fraction must be greater than 0 and at most 1"),
    ("gpu_fraction", 1.5, "gpu_fraction must be greater than 0 and at most 1"),
    ("gpu_fraction", "0.5", "gpu_fraction must be a number"),
    ("gpu_fraction", True, "gpu_fraction must be a number"),
    ("gpu_fraction_basis", "guess", "gpu_fraction_basis must be one of: sm_utilization, memory"),
])
async def test_a_bad_fraction_is_a_400(tmp_path: Path, field: str, value: Any, text: str) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        body = lone_gpu()[:2]
        body[1][field] = value
        response = await srv.http.post("/v1/metrics/ingest", json=body, headers=srv.auth("ingest"))
        assert response.status_code == 400
        assert response.json() == {"error": f"Metric at index 1: {text}"}

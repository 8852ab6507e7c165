"""Chargeback report, heartbeats and hosts over HTTP on a real store."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gpufleet.server.schemas import CSV_COLUMNS, ChargebackReport, HostsResponse
from tests.api_server import store_app

DAY = datetime(2026, 3, 2, tzinfo=UTC)


def hour_of_samples(uuid: str, team: str, model: str, *, gpu_name: str = "NVIDIA A100 80GB"
                    ) -> list[dict[str, Any]]:
    """61 samples a minute apart: exactly one covered hour (the last covers one interval)."""
    return [{
        "timestamp": (DAY + timedelta(hours=10, minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "gpu_index": 0, "gpu_uuid": uuid, "gpu_name": gpu_name, "power_draw_w": 300.0,
        "utilization_gpu_pct": 90, "utilization_memory_pct": 50, "temperature_c": 60,
        "memory_used_mb": 1000, "team_id": team, "model_tag": model,
    } for i in range(60)]


@pytest.fixture
async def loaded(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with store_app(tmp_path / "db.duckdb") as srv:
        headers = srv.auth("ingest")
        for uuid, team, model in (("GPU-a", "ml-infra", "llama3-70b-finetune"),
                                  ("GPU-b", "search", "bge-embed")):
            response = await srv.http.post("/v1/metrics/ingest", headers=headers,
                                           json=hour_of_samples(uuid, team, model))
            assert response.status_code == 200, response.text
        yield srv


async def test_json_report_has_the_documented_shape(loaded) -> None:  # type: ignore[no-untyped-def]
    response = await loaded.http.get("/v1/chargeback/report",
                                     params={"from": "2026-03-01", "to": "2026-03-31"},
                                     headers=loaded.auth("read", header="x-api-key"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["period"] == {"from": "2026-03-01", "to": "2026-03-31"}
    assert body["generated_at"].endswith("Z") and "." in body["generated_at"]
    assert {"total_cost_usd", "total_gpu_hours"} <= set(body["summary"])
    teams = {t["team_id"]: t for t in body["teams"]}
    assert set(teams) == {"ml-infra", "search"}
    infra = teams["ml-infra"]
    assert {"total_cost_usd", "total_gpu_hours", "by_gpu", "by_model"} <= set(infra)
    assert set(infra["by_gpu"][0]) >= {"gpu_arch", "gpu_hours", "rate", "cost_usd"}
    assert infra["by_gpu"][0]["gpu_arch"] == "A100"
    assert infra["by_model"][0]["model_tag"] == "llama3-70b-finetune"
    assert infra["total_gpu_hours"] == pytest.approx(1.0, abs=0.02)
    report = ChargebackReport.model_validate(body)
    assert report.summary.total_gpu_hours == pytest.approx(
        sum(t.total_gpu_hours for t in report.teams), abs=0.011)


async def test_csv_report_columns_and_download_headers(loaded) -> None:  # type: ignore[no-untyped-def]
    response = await loaded.http.get("/v1/chargeback/report", headers=loaded.auth("read"),
                                     params={"from": "2026-03-01", "to": "2026-03-31",
                                             "format": "csv"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == \
        'attachment; filename="chargeback-2026-03-01-to-2026-03-31.csv"'
    rows = list(csv.reader(io.StringIO(response.text)))
    assert tuple(rows[0][:6]) == CSV_COLUMNS[:6]
    assert {row[0] for row in rows[1:]} == {"ml-infra", "search"}


async def test_other_accounts_see_nothing(loaded) -> None:  # type: ignore[no-untyped-def]
    response = await loaded.http.get("/v1/chargeback/report", headers=loaded.auth("other"),
                                     params={"from": "2026-03-01", "to": "2026-03-31"})
    assert response.status_code == 200
    assert response.json()["teams"] == []
    assert response.json()["summary"]["total_gpu_hours"] == 0


@pytest.mark.parametrize(("params", "text"), [
    ({}, "Query parameter from is required (YYYY-MM-DD)"),
    ({"from": "2026-03-01"}, "Query parameter to is required (YYYY-MM-DD)"),
    ({"from": "2026-3-1", "to": "2026-03-31"},
     "Query parameter from must be a date in YYYY-MM-DD form"),
    ({"from": "2026-03-01", "to": "2026-02-30"},
     "Query parameter to must be a date in YYYY-MM-DD form"),
    ({"from": "2026-W01-1", "to": "2026-03-01"},  # an ISO week date: not YYYY-MM-DD
     "Query parameter from must be a date in YYYY-MM-DD form"),
    ({"from": "2026-03-01", "to": "20260301xx"},
     "Query parameter to must be a date in YYYY-MM-DD form"),
    ({"from": "2026-03-02", "to": "2026-03-01"}, "Query parameter from must not be after to"),
    ({"from": "2025-01-01", "to": "2026-01-02"}, "The report period must be at most 366 days"),
    ({"from": "2026-03-01", "to": "2026-03-02", "format": "xml"},
     "Query parameter format must be json or csv"),
])
async def test_bad_periods_are_400(tmp_path: Path, params: dict[str, str], text: str) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        response = await srv.http.get("/v1/chargeback/report", params=params,
                                      headers=srv.auth("read"))
        assert response.status_code == 400
        assert response.json() == {"error": text}


async def test_a_366_day_leap_year_is_allowed(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        response = await srv.http.get("/v1/chargeback/report", headers=srv.auth("read"),
                                      params={"from": "2028-01-01", "to": "2028-12-31"})
        assert response.status_code == 200


async def test_heartbeat_then_hosts(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        hb = {"agent_version": "0.2.0", "gpu_count": 4, "hostname": "gpu-node-01"}
        response = await srv.http.post("/v1/agent/heartbeat", json=hb, headers=srv.auth("ingest"))
        assert response.status_code == 200
        assert response.json()["success"] is True
        assert response.json()["hostname"] == "gpu-node-01"
        bad = await srv.http.post("/v1/agent/heartbeat", json={"gpu_count": -1},
                                  headers=srv.auth("ingest"))
        assert bad.status_code == 400
        hosts = await srv.http.get("/v1/agent/hosts", headers=srv.auth("read"))
        assert hosts.status_code == 200
        listing = HostsResponse.model_validate(hosts.json())
        assert [(h.hostname, h.agent_version, h.gpu_count, h.status) for h in listing.hosts] == \
            [("gpu-node-01", "0.2.0", 4, "alive")]
        theirs = await srv.http.get("/v1/agent/hosts", headers=srv.auth("other"))
        assert theirs.json()["hosts"] == []

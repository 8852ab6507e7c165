"""POST/GET /v1/metrics/ingest over HTTP against a real DuckDB store."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.api_server import api_settings, store_app

NOW = datetime.now(UTC).replace(microsecond=0)


def samples(count: int, *, start: datetime | None = None, uuid: str = "GPU-abc123",
            **extra: Any) -> list[dict[str, Any]]:
    start = start or NOW - timedelta(hours=1)
    return [{
        "timestamp": (start + timedelta(seconds=60 * i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "gpu_index": 0, "gpu_uuid": uuid, "power_draw_w": 312.5, "utilization_gpu_pct": 87,
        "utilization_memory_pct": 62, "temperature_c": 71, "memory_used_mb": 51200, **extra,
    } for i in range(count)]


async def test_health_needs_no_key(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        response = await srv.http.get("/v1/metrics/ingest")
        assert response.status_code == 200
        assert response.json() == {"status": "ok", "endpoint": "GPU Metrics Ingestion API",
                                   "methods": ["POST"],
                                   "documentation": "https://github.com/gpufleet/gpufleet#api"}


async def test_documented_example_is_ingested(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        body = samples(1, job_id="job_train_llama3", team_id="ml-infra",
                       model_tag="llama3-70b-finetune", scheduler_source="kubernetes",
                       gpu_name="NVIDIA A100 80GB", power_limit_w=400, energy_delta_j=18750,
                       memory_total_mb=81920)
        response = await srv.http.post("/v1/metrics/ingest", json=body,
                                       headers=srv.auth("ingest", header="x-api-key"))
        assert response.status_code == 200, response.text
        assert response.json() == {"success": True, "inserted": 1,
                                   "message": "Successfully ingested 1 metric", "duplicates": 0}
        assert srv.app.store.sample_count("default") == 1


async def test_duplicates_and_a_resent_batch_are_a_success(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        headers = srv.auth("ingest", header="x-api-key")
        batch = samples(5)
        first = (await srv.http.post("/v1/metrics/ingest", json=batch, headers=headers)).json()
        assert first["inserted"] == 5 and first["duplicates"] == 0
        again = await srv.http.post("/v1/metrics/ingest", json=batch, headers=headers)
        assert again.status_code == 200
        assert again.json() == {"success": True, "inserted": 0, "duplicates": 5,
                                "message": "Successfully ingested 0 metrics "
                                           "(5 duplicates already stored)"}
        overlap = await srv.http.post("/v1/metrics/ingest", json=samples(7), headers=headers)
        assert overlap.json()["inserted"] == 2 and overlap.json()["duplicates"] == 5
        assert srv.app.store.sample_count("default") == 7


async def test_one_bad_sample_rejects_the_whole_batch(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        batch = samples(5)
        batch[3]["temperature_c"] = 121
        response = await srv.http.post("/v1/metrics/ingest", json=batch,
                                       headers=srv.auth("ingest"))
        assert response.status_code == 400
        assert response.json() == {
            "error": "Metric at index 3: temperature_c must be between 0 and 120"}
        missing = [{k: v for k, v in samples(1)[0].items()
                    if k not in ("gpu_uuid", "power_draw_w")}]
        response = await srv.http.post("/v1/metrics/ingest", json=missing,
                                       headers=srv.auth("ingest"))
        assert response.json() == {
            "error": "Metric at index 0 missing required fields: gpu_uuid, power_draw_w"}
        assert srv.app.store.sample_count() == 0


@pytest.mark.parametrize(("raw", "needle"), [
    (b"[]", "at least one metric"),
    (b'{"timestamp": "2026-01-01T00:00:00Z"}', "must be a JSON array"),
    (b"[NaN]", "NaN"),
    (b'[{"power_draw_w": Infinity}]', "Infinity"),
    (b"[{", "Malformed JSON"),
    (b'"text"', "must be a JSON array"),
])
async def test_malformed_bodies_are_400(tmp_path: Path, raw: bytes, needle: str) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        response = await srv.http.post("/v1/metrics/ingest", content=raw, headers={
            **srv.auth("ingest"), "Content-Type": "application/json"})
        assert response.status_code == 400
        assert needle in response.json()["error"]


async def test_nan_inside_a_valid_looking_sample_is_400(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        raw = json.dumps(samples(2)).replace("312.5", "NaN", 1).encode()
        response = await srv.http.post("/v1/metrics/ingest", content=raw, headers={
            **srv.auth("ingest"), "Content-Type": "application/json"})
        assert response.status_code == 400
        assert srv.app.store.sample_count() == 0


async def test_too_many_samples_is_400(tmp_path: Path) -> None:
    settings = api_settings(**{"limits.max_samples_per_batch": 10})
    async with store_app(tmp_path / "db.duckdb", settings) as srv:
        response = await srv.http.post("/v1/metrics/ingest", json=samples(11),
                                       headers=srv.auth("ingest"))
        assert response.status_code == 400
        assert response.json()["error"] == "Too many metrics in one request: 11 (maximum 10)"
        ok = await srv.http.post("/v1/metrics/ingest", json=samples(10), headers=srv.auth("ingest"))
        assert ok.json()["inserted"] == 10


async def test_future_timestamps_are_refused(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        body = samples(1, start=datetime.now(UTC) + timedelta(minutes=6))
        response = await srv.http.post("/v1/metrics/ingest", json=body, headers=srv.auth("ingest"))
        assert response.json() == {
            "error": "Metric at index 0: timestamp is more than 5 minutes in the future"}


async def test_non_json_content_type_is_415(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        response = await srv.http.post("/v1/metrics/ingest", content=json.dumps(samples(1)),
                                       headers={**srv.auth("ingest"),
                                                "Content-Type": "text/plain"})
        assert response.status_code == 415


async def test_accounts_are_isolated(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        same = samples(3)
        mine = await srv.http.post("/v1/metrics/ingest", json=same,
                                   headers=srv.auth("ingest_read"))
        theirs = await srv.http.post("/v1/metrics/ingest", json=same, headers=srv.auth("other"))
        # the same GPU and timestamps in another account are not duplicates
        assert mine.json()["inserted"] == 3 and theirs.json()["inserted"] == 3
        assert srv.app.store.sample_count("default") == 3
        assert srv.app.store.sample_count("acme") == 3
        day = (NOW - timedelta(hours=1)).date().isoformat()
        report = await srv.http.get("/v1/chargeback/report", params={"from": day, "to": day},
                                    headers=srv.auth("other"))
        assert report.status_code == 200
        assert srv.app.store.sample_count("nobody") == 0

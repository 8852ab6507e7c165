"""Every example body of the two API documents parses into server.schemas and serialises back."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from gpufleet.server.schemas import (
    CSV_COLUMNS,
    ChargebackCsvRow,
    ChargebackReport,
    ErrorBody,
    GpuMemory,
    GpuMemoryEntry,
    GpuMemoryResponse,
    GpuStatusResponse,
    Heartbeat,
    IngestHealth,
    IngestResult,
    MetricSample,
    PurgeRequest,
    PurgeResult,
    format_utc,
    mb_to_gb,
    percent,
)

# ---------------------------------------------------------------- seed 000 (operator GPU API)
GPU_STATUS = """{
"status": "success",
"timestamp": "2025-01-29T12:00:00Z",
"gpus": [
{
"index": 0,
"name": "NVIDIA A100 80GB",
"memory": {
"total_mb": 81920,
"used_mb": 45056,
"free_mb": 36864,
"total_gb": 80.0,
"used_gb": 44.0,
"free_gb": 36.0,
"percent_used": 55.0
},
"utilization": {
"gpu_percent": 72,
"memory_percent": 55
},
"temperature_c": 65
}
],
"processes": [
{
"pid": 12345,
"name": "python",
"memory_mb": 40960
}
],
"total_gpus": 1
}"""

GPU_MEMORY = """{
"status": "success",
"timestamp": "2025-01-29T12:00:00Z",
"memory": [
{
"total_gb": 80.0,
"used_gb": 44.0,
"free_gb": 36.0,
"percent_used": 55.0,
"percent_free": 45.0
}
]
}"""

PURGE_REQUEST = """{ "force": false }"""

PURGE_RESULT = """{
"status": "success",
"timestamp": "2025-01-29T12:00:00Z",
"actions": ["unloaded qwen-3.5-27b", "cleared CUDA cache"],
"memory_before": {
"used_gb": 44.0,
"total_gb": 80.0,
"percent_used": 55.0
},
"memory_after": {
"used_gb": 2.1,
"total_gb": 80.0,
"percent_used": 2.6
},
"memory_freed_gb": 41.9,
"models_unloaded": ["qwen-3.5-27b"],
"errors": [],
"recommendation": "GPU memory cleared successfully"
}"""

# ---------------------------------------------------------------- seed 004 (ingest, chargeback)
INGEST_CURL_BODY = """[{
"timestamp": "2026-02-25T12:00:00Z",
"gpu_index": 0,
"gpu_uuid": "GPU-abc123",
"power_draw_w": 312.5,
"utilization_gpu_pct": 87,
"utilization_memory_pct": 62,
"temperature_c": 71,
"memory_used_mb": 51200
}]"""

INGEST_PAYLOAD = """[
{
"timestamp": "2026-02-25T12:00:00Z",
"gpu_index": 0,
"gpu_uuid": "GPU-abc123",
"gpu_name": "NVIDIA A100 80GB",
"power_draw_w": 312.5,
"power_limit_w": 400,
"energy_delta_j": 18750,
"utilization_gpu_pct": 87,
"utilization_memory_pct": 62,
"temperature_c": 71,
"memory_used_mb": 51200,
"memory_total_mb": 81920,
"job_id": "job_train_llama3",
"team_id": "ml-infra",
"model_tag": "llama3-70b-finetune",
"scheduler_source": "kubernetes"
}
]"""

INGEST_RESULT = """{
"success": true,
"inserted": 1,
"message": "Successfully ingested 1 metric"
}"""

INGEST_ERROR = """{
"error": "Metric at index 0 missing required fields: gpu_uuid, power_draw_w"
}"""

INGEST_HEALTH = """{
"status": "ok",
"endpoint": "GPU Metrics Ingestion API",
"methods": ["POST"],
"documentation": "https://aluminatiai.com/docs/api"
}"""

HEARTBEAT = """{ "agent_version": "0.2.0", "gpu_count": 4, "hostname": "gpu-node-01" }"""

CHARGEBACK = """{
"period": { "from": "2026-03-01", "to": "2026-03-31" },
"generated_at": "2026-04-01T09:00:00.000Z",
"summary": {
"total_cost_usd": 4821.60,
"total_gpu_hours": 320.14
},
"teams": [
{
"team_id": "ml-infra",
"total_cost_usd": 3214.40,
"total_gpu_hours": 213.63,
"by_gpu": [
{ "gpu_arch": "A100", "gpu_hours": 213.63, "rate": 15.04, "cost_usd": 3213.20 }
],
"by_model": [
{ "model_tag": "llama3-70b-finetune", "gpu_hours": 180.10, "cost_usd": 2708.30 },
{ "model_tag": "mistral-7b-eval", "gpu_hours": 33.53, "cost_usd": 504.10 }
]
}
]
}"""

CSV_DOCUMENTED_COLUMNS = "team_id, model_tag, gpu_arch, gpu_hours, rate_per_hour_usd, cost_usd"

OBJECT_EXAMPLES: list[tuple[str, type[BaseModel], str]] = [
    ("gpu status", GpuStatusResponse, GPU_STATUS),
    ("gpu memory", GpuMemoryResponse, GPU_MEMORY),
    ("purge request", PurgeRequest, PURGE_REQUEST),
    ("purge result", PurgeResult, PURGE_RESULT),
    ("ingest result", IngestResult, INGEST_RESULT),
    ("ingest error", ErrorBody, INGEST_ERROR),
    ("ingest health", IngestHealth, INGEST_HEALTH),
    ("heartbeat", Heartbeat, HEARTBEAT),
    ("chargeback report", ChargebackReport, CHARGEBACK),
]


def _dump(model: BaseModel) -> dict:
    # exclude_unset: gpufleet's additive fields (defaults) are not part of the documented body.
    return model.model_dump(mode="json", by_alias=True, exclude_unset=True)


@pytest.mark.parametrize(("label", "model", "text"), OBJECT_EXAMPLES,
                         ids=[e[0] for e in OBJECT_EXAMPLES])
def test_documented_body_round_trips(label, model, text):
    documented = json.loads(text)
    parsed = model.model_validate_json(text)
    assert _dump(parsed) == documented
    # ... and the full serialisation keeps every documented key and value, adding only extensions.
    full = parsed.model_dump(mode="json", by_alias=True)
    assert _subset(documented, full)
    assert model.model_validate(full) == parsed


@pytest.mark.parametrize("text", [INGEST_CURL_BODY, INGEST_PAYLOAD], ids=["curl", "payload"])
def test_metric_sample_payloads_round_trip(text):
    documented = json.loads(text)
    samples = TypeAdapter(list[MetricSample]).validate_json(text)
    assert [_dump(s) for s in samples] == documented
    assert samples[0].timestamp == datetime(2026, 2, 25, 12, tzinfo=UTC)


def test_additive_fields_sit_beside_documented_ones():
    status = GpuStatusResponse.model_validate_json(GPU_STATUS)
    full = status.model_dump(mode="json", by_alias=True)
    gpu = full["gpus"][0]
    # documented keys unchanged; unsupported extensions are null, never absent-by-exception
    assert gpu["temperature_c"] == 65 and gpu["power_draw_w"] is None and gpu["fan_speed_pct"] is None
    assert gpu["uuid"] is None and gpu["mig_mode"] is None and gpu["lost"] is False
    assert full["processes"][0]["visible"] is True and full["node"] is None
    report = ChargebackReport.model_validate_json(CHARGEBACK)
    assert report.model_dump(mode="json", by_alias=True)["summary"]["energy_kwh"] == 0.0
    assert report.period.from_ == date(2026, 3, 1)


def test_csv_columns_start_with_the_documented_six():
    documented = [c.strip() for c in CSV_DOCUMENTED_COLUMNS.split(",")]
    assert list(CSV_COLUMNS[:6]) == documented
    assert list(ChargebackCsvRow.model_fields)[:6] == documented
    assert set(CSV_COLUMNS) == set(ChargebackCsvRow.model_fields)


def test_derived_memory_values_follow_the_documents():
    mem = GpuMemory.from_mb(81920, 45056)
    documented = json.loads(GPU_STATUS)["gpus"][0]["memory"]
    assert mem.model_dump() == documented
    entry = GpuMemoryEntry.from_memory(mem)
    assert _dump_set(entry) == json.loads(GPU_MEMORY)["memory"][0]
    assert mb_to_gb(2150) == 2.1 and mb_to_gb(46068) == 45.0 and mb_to_gb(81559) == 79.6
    assert percent(2.1, 80.0) == 2.6 and percent(1, 3) == 33.3 and percent(5, 0) == 0.0
    assert GpuMemory.from_mb(0, 0).percent_used == 0.0
    assert GpuMemoryEntry.from_memory(GpuMemory.from_mb(0, 0)).percent_free == 0.0


def _dump_set(entry: GpuMemoryEntry) -> dict:
    return {k: v for k, v in entry.model_dump(mode="json").items()
            if k in ("total_gb", "used_gb", "free_gb", "percent_used", "percent_free")}


def test_timestamps_are_utc_with_z():
    plus_two = timezone(timedelta(hours=2))
    assert format_utc(datetime(2025, 1, 29, 14, 0, tzinfo=plus_two)) == "2025-01-29T12:00:00Z"
    assert format_utc(datetime(2025, 1, 29, 12, 0)) == "2025-01-29T12:00:00Z"  # naive = UTC
    assert format_utc(datetime(2026, 4, 1, 9, 0, 0, 123456, tzinfo=UTC),
                      millis=True) == "2026-04-01T09:00:00.123Z"
    status = GpuStatusResponse(timestamp=datetime(2025, 1, 29, 14, tzinfo=plus_two), gpus=[],
                               processes=[], total_gpus=0)
    assert json.loads(status.model_dump_json())["timestamp"] == "2025-01-29T12:00:00Z"
    sample = MetricSample.model_validate({**json.loads(INGEST_CURL_BODY)[0],
                                          "timestamp": "2026-02-25T13:00:00+01:00"})
    assert sample.model_dump(mode="json")["timestamp"] == "2026-02-25T12:00:00Z"


def test_timestamps_with_an_offset_are_held_in_utc():
    sample = MetricSample.model_validate({**json.loads(INGEST_CURL_BODY)[0],
                                          "timestamp": "2026-02-25T13:00:00+01:00"})
    assert sample.timestamp == datetime(2026, 2, 25, 12, 0, tzinfo=UTC)
    assert sample.timestamp.tzinfo is UTC


@pytest.mark.parametrize("text", ["0001-01-01T00:30:00+01:00", "9999-12-31T23:30:00-01:00"])
@pytest.mark.parametrize("as_datetime", [False, True])
def test_timestamps_outside_the_utc_range_are_validation_errors(text, as_datetime):
    value = datetime.fromisoformat(text) if as_datetime else text
    body = {**json.loads(INGEST_CURL_BODY)[0], "timestamp": value}
    with pytest.raises(ValidationError, match="out of range once converted to UTC"):
        MetricSample.model_validate(body)
    with pytest.raises(ValidationError):
        TypeAdapter(GpuStatusResponse).validate_python(
            {"timestamp": value, "gpus": [], "processes": [], "total_gpus": 0})


@pytest.mark.parametrize(("field", "value"), [
    ("power_draw_w", 1500.1), ("utilization_gpu_pct", 101), ("temperature_c", -1),
    ("gpu_index", -1), ("memory_used_mb", -5), ("scheduler_source", "nomad"),
    ("team_id", "t" * 129),
])
def test_metric_sample_rejects_out_of_range(field, value):
    body = {**json.loads(INGEST_PAYLOAD)[0], field: value}
    with pytest.raises(ValidationError):
        MetricSample.model_validate(body)


def _subset(small, big) -> bool:
    """Every key/value of ``small`` is in ``big`` (recursively, lists element-wise)."""
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and _subset(v, big[k]) for k, v in small.items())
    if isinstance(small, list):
        return isinstance(big, list) and len(small) == len(big) and all(
            _subset(a, b) for a, b in zip(small, big, strict=True))
    return small == big

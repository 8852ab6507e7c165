"""Ingest validation rules and their exact error texts; agreement with schemas.MetricSample."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from gpufleet.server.api.validation import (
    TS_US,
    IngestValidationError,
    parse_timestamp,
    validate_batch,
    validate_columns,
    validate_rows_and_columns,
)
from gpufleet.server.schemas import MetricSample

NOW = datetime(2026, 2, 25, 12, 0, tzinfo=UTC)


def sample(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "timestamp": "2026-02-25T12:00:00Z", "gpu_index": 0, "gpu_uuid": "GPU-abc123",
        "power_draw_w": 312.5, "utilization_gpu_pct": 87, "utilization_memory_pct": 62,
        "temperature_c": 71, "memory_used_mb": 51200,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def full_sample(**changes: Any) -> dict[str, Any]:
    return sample(gpu_name="NVIDIA A100 80GB", power_limit_w=400, energy_delta_j=18750,
                  memory_total_mb=81920, fan_speed_pct=40, sm_clock_mhz=1410,
                  memory_clock_mhz=1593, job_id="job_train_llama3", team_id="ml-infra",
                  model_tag="llama3-70b-finetune", scheduler_source="kubernetes", **changes)


def error_of(payload: Any) -> str:
    with pytest.raises(IngestValidationError) as caught:
        validate_batch(payload, max_samples=10, now=NOW)
    return str(caught.value)


def test_documented_example_payload_is_valid() -> None:
    rows = validate_batch([full_sample()], max_samples=10, now=NOW)
    assert rows[0]["timestamp"] == NOW
    assert rows[0]["timestamp"].tzinfo is not None
    assert rows[0]["team_id"] == "ml-infra"


def test_missing_fields_are_named_in_document_order() -> None:
    bad = sample(gpu_uuid=_DROP, power_draw_w=_DROP)
    assert error_of([bad]) == "Metric at index 0 missing required fields: gpu_uuid, power_draw_w"


def test_null_required_field_counts_as_missing() -> None:
    assert error_of([sample(temperature_c=None)]) == \
        "Metric at index 0 missing required fields: temperature_c"


def test_first_failing_sample_and_all_its_problems_are_named() -> None:
    payload = [sample(), sample(), sample(), sample(temperature_c=130, fan_speed_pct=101)]
    assert error_of(payload) == ("Metric at index 3: temperature_c must be between 0 and 120; "
                                 "fan_speed_pct must be between 0 and 100")


def test_missing_and_invalid_together() -> None:
    bad = sample(gpu_uuid=_DROP, power_draw_w=-1)
    assert error_of([bad]) == ("Metric at index 0 missing required fields: gpu_uuid; "
                               "power_draw_w must be between 0 and 1500")


@pytest.mark.parametrize(("changes", "text"), [
    ({"power_draw_w": 1500.1}, "power_draw_w must be between 0 and 1500"),
    ({"power_draw_w": -0.5}, "power_draw_w must be between 0 and 1500"),
    ({"utilization_gpu_pct": 100.5}, "utilization_gpu_pct must be between 0 and 100"),
    ({"utilization_memory_pct": -1}, "utilization_memory_pct must be between 0 and 100"),
    ({"temperature_c": 121}, "temperature_c must be between 0 and 120"),
    ({"memory_used_mb": -1}, "memory_used_mb must be a finite number >= 0"),
    ({"energy_delta_j": -5}, "energy_delta_j must be a finite number >= 0"),
    ({"power_limit_w": -5}, "power_limit_w must be a finite number >= 0"),
    ({"memory_total_mb": -5}, "memory_total_mb must be a finite number >= 0"),
    ({"sm_clock_mhz": -5}, "sm_clock_mhz must be a finite number >= 0"),
    ({"memory_clock_mhz": -5}, "memory_clock_mhz must be a finite number >= 0"),
    ({"fan_speed_pct": 101}, "fan_speed_pct must be between 0 and 100"),
    ({"memory_used_mb": float("inf")}, "memory_used_mb must be a finite number >= 0"),
    ({"power_draw_w": float("nan")}, "power_draw_w must be between 0 and 1500"),
    ({"gpu_index": -1}, "gpu_index must be an integer >= 0"),
    ({"gpu_index": 1.0}, "gpu_index must be an integer >= 0"),
    ({"gpu_index": True}, "gpu_index must be an integer >= 0"),
    ({"gpu_index": "0"}, "gpu_index must be an integer >= 0"),
    ({"gpu_uuid": ""}, "gpu_uuid must be a non-empty string"),
    ({"gpu_uuid": 7}, "gpu_uuid must be a non-empty string"),
    ({"utilization_gpu_pct": "87"}, "utilization_gpu_pct must be a number"),
    ({"utilization_gpu_pct": True}, "utilization_gpu_pct must be a number"),
    ({"temperature_c": [71]}, "temperature_c must be a number"),
    ({"timestamp": "yesterday"}, "timestamp must be an ISO-8601 UTC timestamp"),
    ({"timestamp": "2026-02-25"}, "timestamp must be an ISO-8601 UTC timestamp"),
    ({"timestamp": 1772020800}, "timestamp must be an ISO-8601 UTC timestamp"),
    ({"timestamp": "2026-02-25T12:05:01Z"}, "timestamp is more than 5 minutes in the future"),
    ({"team_id": "t" * 129}, "team_id must be at most 128 characters"),
    ({"model_tag": "m" * 129}, "model_tag must be at most 128 characters"),
    ({"team_id": 5}, "team_id must be a string"),
    ({"gpu_name": {"a": 1}}, "gpu_name must be a string"),
    ({"job_id": 12}, "job_id must be a string"),
    ({"scheduler_source": "nomad"},
     "scheduler_source must be one of: kubernetes, slurm, runai, manual"),
    ({"scheduler_source": ["slurm"]},
     "scheduler_source must be one of: kubernetes, slurm, runai, manual"),
])
def test_every_rule_has_its_text(changes: dict[str, Any], text: str) -> None:
    assert error_of([sample(), sample(**changes)]) == f"Metric at index 1: {text}"


def test_edges_of_ranges_are_valid() -> None:
    rows = validate_batch([sample(power_draw_w=0, temperature_c=120, utilization_gpu_pct=100,
                                  team_id="t" * 128, timestamp="2026-02-25T12:05:00Z")],
                          max_samples=10, now=NOW)
    assert rows[0]["timestamp"] == NOW + timedelta(minutes=5)


def test_offsets_are_converted_to_utc_and_naive_is_utc() -> None:
    rows = validate_batch([sample(timestamp="2026-02-25T13:00:00+01:00"),
                           sample(timestamp="2026-02-25T12:00:00", gpu_index=1)],
                          max_samples=10, now=NOW)
    assert rows[0]["timestamp"] == NOW == rows[1]["timestamp"]
    assert rows[0]["timestamp"].utcoffset() == timedelta(0)


@pytest.mark.parametrize(("payload", "text"), [
    ({"timestamp": "x"}, "Request body must be a JSON array of metric objects"),
    ("[]", "Request body must be a JSON array of metric objects"),
    ([], "Request body must contain at least one metric"),
    ([sample(), 5], "Metric at index 1: must be a JSON object"),
    ([sample()] * 11, "Too many metrics in one request: 11 (maximum 10)"),
])
def test_batch_shape(payload: Any, text: str) -> None:
    assert error_of(payload) == text


def test_unknown_fields_are_ignored_and_bad_hostname_dropped() -> None:
    rows = validate_batch([sample(future_field={"x": 1}, hostname=["not", "a", "name"])],
                          max_samples=10, now=NOW)
    assert rows[0]["hostname"] is None
    good = validate_batch([sample(hostname="gpu-node-01")], max_samples=10, now=NOW)
    assert good[0]["hostname"] == "gpu-node-01"


def test_nothing_is_changed_when_the_batch_fails() -> None:
    first = sample()
    with pytest.raises(IngestValidationError):
        validate_batch([first, sample(temperature_c=500)], max_samples=10, now=NOW)
    assert first["timestamp"] == "2026-02-25T12:00:00Z"


def test_columns_line_up_with_rows() -> None:
    payload = json.loads(json.dumps([full_sample(gpu_index=i) for i in range(4)]))
    columns = validate_columns(payload, max_samples=10, now=NOW)
    assert columns["gpu_index"] == [0, 1, 2, 3]
    assert columns["timestamp"] == [NOW] * 4
    assert columns["scheduler_source"] == ["kubernetes"] * 4


def test_every_timestamp_form_parses_as_one_by_one_and_gives_its_microseconds() -> None:
    texts = ["2026-02-25T12:00:00Z", "2026-02-25T12:00:00+00:00", "2026-02-25T13:30:00+01:30",
             "2026-02-25T12:00:00", "2026-02-25 11:59:59.250000Z", "2026-02-25T12:00:00Z"]
    payload = [sample(timestamp=text, gpu_index=i) for i, text in enumerate(texts)]
    rows, columns = validate_rows_and_columns(payload, max_samples=10, now=NOW, finite=True)
    expected = [parse_timestamp(text) for text in texts]
    assert [row["timestamp"] for row in rows] == expected == columns["timestamp"]
    assert all(ts.tzinfo is UTC for ts in columns["timestamp"])
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert columns[TS_US] == [(ts - epoch) // timedelta(microseconds=1) for ts in expected]
    assert columns["gpu_uuid"] == ["GPU-abc123"] * len(texts)


def test_one_unparseable_timestamp_among_many_is_named() -> None:
    payload = [sample(timestamp=f"2026-02-25T11:{m:02d}:00Z") for m in range(5)]
    payload.append(sample(timestamp="2026-02-25T11:61:00Z"))
    assert error_of(payload) == "Metric at index 5: timestamp must be an ISO-8601 UTC timestamp"


def test_nan_is_refused_when_the_caller_does_not_vouch_for_finite_numbers() -> None:
    with pytest.raises(IngestValidationError):
        validate_batch([sample(), sample(power_draw_w=float("nan"))], max_samples=10, now=NOW)


# --- agreement with the documented schema ----------------------------------------------

AGREEMENT_CASES: list[dict[str, Any]] = [
    sample(), full_sample(),
    sample(power_draw_w=1500), sample(power_draw_w=1500.01), sample(power_draw_w=-1),
    sample(utilization_gpu_pct=101), sample(utilization_memory_pct=-0.1),
    sample(temperature_c=120), sample(temperature_c=120.5), sample(memory_used_mb=-3),
    sample(gpu_index=-1), sample(gpu_index=70_000), sample(gpu_index=2**31 - 1),
    sample(gpu_index=2**31), sample(gpu_uuid=""), sample(gpu_uuid=_DROP),
    sample(team_id="a" * 128), sample(team_id="a" * 129), sample(model_tag="b" * 129),
    sample(scheduler_source="slurm"), sample(scheduler_source="cron"),
    sample(fan_speed_pct=100), sample(fan_speed_pct=100.5), sample(energy_delta_j=-1),
    sample(power_limit_w=-1), sample(memory_total_mb=-1), sample(sm_clock_mhz=-1),
    sample(memory_clock_mhz=-1), sample(timestamp="not a time"),
    # outside datetime's range once in UTC: both sides reject, neither raises
    sample(timestamp="0001-01-01T00:30:00+01:00"), sample(timestamp="9999-12-31T23:30:00-01:00"),
    sample(timestamp="2026-02-25T13:00:00+01:00"),  # an offset: both hold the same UTC instant
    # text: lone surrogates and NUL in any string field, and each field's maximum length
    sample(gpu_uuid="GPU-\udfff"), sample(gpu_uuid="GPU-\x00"), sample(gpu_uuid="G" * 128),
    sample(gpu_uuid="G" * 129), sample(gpu_name="A100 \ud800"), sample(gpu_name="n" * 257),
    sample(job_id="j" * 256), sample(job_id="j" * 257), sample(job_id="\x00"),
    sample(team_id="ml-\udfff"), sample(model_tag="é\udc80"), sample(model_tag="llama-🦙"),
    sample(timestamp="1999-12-31T23:59:59Z"), sample(timestamp="2000-01-01T00:00:00Z"),
]


@pytest.mark.parametrize("case", AGREEMENT_CASES)
def test_validator_agrees_with_metric_sample(case: dict[str, Any]) -> None:
    try:
        model = MetricSample.model_validate(case)
    except ValidationError:
        model = None
    try:
        rows = validate_batch([dict(case)], max_samples=1, now=NOW)
    except IngestValidationError:
        rows = None
    assert (model is None) == (rows is None), case
    if model is not None and rows is not None:
        dumped = model.model_dump()
        for name, value in dumped.items():
            assert rows[0].get(name) == value, name


@pytest.mark.parametrize("text", [
    "0001-01-01T00:30:00+01:00",  # before year 1 once in UTC
    "9999-12-31T23:30:00-01:00",  # after year 9999 once in UTC
    "0001-01-01T00:00:00.5+00:00:01",
])
def test_timestamps_outside_datetime_in_utc_are_validation_errors(text: str) -> None:
    assert parse_timestamp(text) is None
    assert error_of([sample(), sample(timestamp=text)]) == \
        "Metric at index 1: timestamp must be an ISO-8601 UTC timestamp"
    # the fast column path alone (every timestamp in the batch has an offset)
    assert error_of([sample(timestamp=text)]) == \
        "Metric at index 0: timestamp must be an ISO-8601 UTC timestamp"


async def test_overflowing_timestamp_is_a_400_and_the_server_keeps_serving(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.api_server import store_app

    async with store_app(tmp_path / "db.duckdb") as srv:
        headers = srv.auth("ingest")
        for text in ("0001-01-01T00:30:00+01:00", "9999-12-31T23:30:00-01:00"):
            response = await srv.http.post("/v1/metrics/ingest", headers=headers,
                                           json=[sample(timestamp=text)])
            assert response.status_code == 400
            assert response.json() == {
                "error": "Metric at index 0: timestamp must be an ISO-8601 UTC timestamp"}
            # A body parsed by the pydantic schemas: an unknown field is ignored, never a 500.
            beat = await srv.http.post("/v1/agent/heartbeat", headers=headers, json={
                "agent_version": "1", "gpu_count": 1, "hostname": "h", "timestamp": text})
            assert beat.status_code == 200 and beat.json()["received_at"].endswith("Z")
        # year 1 is representable but older than any telemetry: the documented floor
        edge = await srv.http.post("/v1/metrics/ingest", headers=headers,
                                   json=[sample(timestamp="0001-01-01T00:00:00Z")])
        assert edge.status_code == 400
        assert edge.json() == {
            "error": "Metric at index 0: timestamp must not be before 2000-01-01T00:00:00Z"}
        report = await srv.http.get("/v1/chargeback/report", headers=srv.auth("read"),
                                    params={"from": "0001-01-01", "to": "0001-01-01"})
        assert report.status_code == 200
        assert report.json()["summary"]["total_gpu_hours"] == 0


@pytest.mark.parametrize("fmt", ["json", "csv"])
async def test_a_report_ending_on_the_last_representable_day_is_a_400(tmp_path, fmt: str) -> None:  # type: ignore[no-untyped-def]
    from tests.api_server import store_app

    async with store_app(tmp_path / "db.duckdb") as srv:
        response = await srv.http.get("/v1/chargeback/report", headers=srv.auth("read"),
                                      params={"from": "9999-12-31", "to": "9999-12-31",
                                              "format": fmt})
        assert response.status_code == 400
        assert response.json() == {"error": "'to' must be before 9999-12-31"}
        fine = await srv.http.get("/v1/chargeback/report", headers=srv.auth("read"),
                                  params={"from": "9999-12-30", "to": "9999-12-30"})
        assert fine.status_code == 200


STRING_FIELDS = ("gpu_uuid", "gpu_name", "job_id", "team_id", "model_tag")


@pytest.mark.parametrize("name", STRING_FIELDS)
@pytest.mark.parametrize("bad", ["GPU-\udfff", "\ud800x", "a\x00b", "é\udc80"])
def test_lone_surrogates_and_nul_are_refused_in_every_string_field(name: str, bad: str) -> None:
    expected = f"Metric at index 1: {name} must not contain NUL or lone surrogate characters"
    assert error_of([full_sample(), {**full_sample(), name: bad}]) == expected
    assert error_of([{**full_sample(), name: bad}]) == expected.replace("index 1", "index 0")


@pytest.mark.parametrize(("name", "limit"), [("gpu_uuid", 128), ("gpu_name", 256), ("job_id", 256),
                                             ("team_id", 128), ("model_tag", 128)])
def test_every_string_field_has_a_maximum_length(name: str, limit: int) -> None:
    assert validate_batch([{**full_sample(), name: "x" * limit}], max_samples=1, now=NOW)
    assert error_of([{**full_sample(), name: "x" * (limit + 1)}]) == \
        f"Metric at index 0: {name} must be at most {limit} characters"
    assert error_of([full_sample(gpu_uuid="x" * 1_000_000)]) == \
        "Metric at index 0: gpu_uuid must be at most 128 characters"


def test_paired_surrogates_from_json_are_text() -> None:
    # "\ud83e\udd99" in JSON is one character (🦙): valid, unlike either half alone
    payload = json.loads('[{"timestamp": "2026-02-25T12:00:00Z", "gpu_index": 0, '
                         '"gpu_uuid": "GPU-\\ud83e\\udd99", "power_draw_w": 1, '
                         '"utilization_gpu_pct": 1, "utilization_memory_pct": 1, '
                         '"temperature_c": 1, "memory_used_mb": 1}]')
    assert validate_batch(payload, max_samples=1, now=NOW)[0]["gpu_uuid"] == "GPU-🦙"


def test_timestamps_have_a_floor_and_an_optional_retention() -> None:
    assert error_of([sample(timestamp="1999-12-31T23:59:59Z")]) == \
        "Metric at index 0: timestamp must not be before 2000-01-01T00:00:00Z"
    assert validate_batch([sample(timestamp="2000-01-01T00:00:00Z")], max_samples=1, now=NOW)
    old = sample(timestamp="2026-01-25T11:59:59Z")
    assert validate_batch([dict(old)], max_samples=1, now=NOW)  # no retention configured
    with pytest.raises(IngestValidationError) as caught:
        validate_batch([sample(), dict(old)], max_samples=2, now=NOW, max_age=timedelta(days=31))
    assert str(caught.value) == "Metric at index 1: timestamp is more than 31 days in the past"
    assert validate_batch([sample(timestamp="2026-01-25T12:00:00Z")], max_samples=1, now=NOW,
                          max_age=timedelta(days=31))


def test_a_hostname_that_is_not_text_is_dropped_like_an_unknown_field() -> None:
    rows = validate_batch([sample(hostname="node-\udfff"), sample(hostname="a\x00",
                                                                  timestamp="2026-02-25T11:59:00Z")],
                          max_samples=2, now=NOW)
    assert [r["hostname"] for r in rows] == [None, None]


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def test_unknown_fields_nested_past_the_limit_fail_the_fast_path_only_then() -> None:
    # batch array (1) + sample object (2) + 30 lists = 32 levels: the limit itself
    ok = [full_sample(extra=_nested(30), hostname="h")]
    rows, _ = validate_rows_and_columns(ok, max_samples=1, now=NOW, max_depth=32)
    assert rows[0]["extra"] == _nested(30)
    with pytest.raises(IngestValidationError) as caught:
        validate_rows_and_columns([full_sample(), full_sample(extra=_nested(31))],
                                  max_samples=2, now=NOW, max_depth=32)
    assert str(caught.value) == "Request body is nested too deeply: at most 32 levels"
    # documented fields with explicit nulls and a hostname need no look at unknown keys
    assert validate_rows_and_columns([sample(gpu_name=None, hostname="h")], max_samples=1, now=NOW,
                                     max_depth=2)

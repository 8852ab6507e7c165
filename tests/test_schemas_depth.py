"""Issue 14's additive schema: process depth, GPU health, the signal request and result."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gpufleet.server.schemas import (
    MODELS_BY_NAME,
    THROTTLE_REASON_NAMES,
    THROTTLING_REASONS,
    GpuEcc,
    GpuInfo,
    GpuMemory,
    GpuProcess,
    GpuRemappedRows,
    GpuRetiredPages,
    GpuStatusResponse,
    GpuUtilization,
    SignalRequest,
    XidError,
)
from tests.test_schemas import GPU_STATUS


def _gpu(**fields) -> GpuInfo:
    return GpuInfo(index=0, name="NVIDIA A100-SXM4-80GB", memory=GpuMemory.from_mb(81920, 0),
                   utilization=GpuUtilization(), **fields)


def test_documented_status_body_gets_null_health_and_process_depth():
    full = GpuStatusResponse.model_validate_json(GPU_STATUS).model_dump(mode="json")
    gpu, proc = full["gpus"][0], full["processes"][0]
    for name in ("throttle_reasons", "ecc_errors", "retired_pages", "remapped_rows", "pcie",
                 "xid_errors", "xid_error_count"):
        assert gpu[name] is None, name
    assert gpu["utilization"] == {"gpu_percent": 72, "memory_percent": 55,
                                  "encoder_percent": None, "decoder_percent": None}
    for name in ("cpu_percent", "host_rss_mb", "started_at", "elapsed_s", "cgroup",
                 "container_id", "children"):
        assert proc[name] is None, name


def test_a_healthy_gpu_has_no_problems_and_unknown_is_not_a_problem():
    assert _gpu().health_problems() == [] and not _gpu().throttling
    healthy = _gpu(throttle_reasons=["gpu_idle"], ecc_errors=GpuEcc(
        volatile_corrected=3, volatile_uncorrected=0, aggregate_corrected=90,
        aggregate_uncorrected=0), remapped_rows=GpuRemappedRows(
        correctable=2, uncorrectable=0, pending=False, failed=False),
        xid_errors=[], xid_error_count=0)
    assert healthy.health_problems() == [] and not healthy.throttling


def test_power_cap_and_sync_boost_are_listed_but_not_throttling():
    capped = _gpu(throttle_reasons=["sw_power_cap", "sync_boost"])
    assert not capped.throttling and capped.health_problems() == []
    assert set(THROTTLE_REASON_NAMES) >= THROTTLING_REASONS


def test_problems_name_heat_ecc_repairs_and_xids():
    sick = _gpu(throttle_reasons=["sw_power_cap", "sw_thermal_slowdown"],
                ecc_errors=GpuEcc(volatile_uncorrected=2),
                retired_pages=GpuRetiredPages(single_bit_ecc=1, double_bit_ecc=0, pending=True),
                remapped_rows=GpuRemappedRows(correctable=0, uncorrectable=1, pending=True,
                                              failed=False),
                xid_errors=[XidError(xid=79, at="2026-03-03T14:00:00Z")], xid_error_count=3)
    assert sick.throttling
    assert sick.health_problems() == [
        "throttling: sw thermal slowdown",
        "2 uncorrected ECC error(s) since driver load",
        "page retirement pending: reset the GPU",
        "row remapping pending: reset the GPU",
        "3 XID error(s), last XID 79",
    ]
    failed = _gpu(remapped_rows=GpuRemappedRows(correctable=0, uncorrectable=9, pending=True,
                                                failed=True), lost=True)
    assert failed.health_problems() == ["GPU is lost", "row remapping failed: the GPU needs service"]


@pytest.mark.parametrize("signal", ["TERM", "INT", "KILL"])
def test_signal_request_takes_the_three_names(signal):
    assert SignalRequest.model_validate({"signal": signal}).signal == signal


@pytest.mark.parametrize("body", [{}, {"signal": "HUP"}, {"signal": "SIGTERM"}, {"signal": "term"},
                                  {"signal": 15}, {"signal": None}, {"signal": ["TERM"]}])
def test_signal_request_refuses_anything_else(body):
    with pytest.raises(ValidationError):
        SignalRequest.model_validate(body)


def test_signal_models_are_in_the_openapi_list():
    assert {"SignalRequest", "SignalResult"} <= set(MODELS_BY_NAME)


def test_process_children_round_trip():
    proc = GpuProcess.model_validate({
        "pid": 10, "name": "python", "started_at": "2026-03-03T13:00:00+01:00",
        "children": [{"pid": 11, "ppid": 10, "name": "pt_data_worker", "host_rss_mb": 512}]})
    dumped = proc.model_dump(mode="json")
    assert dumped["started_at"] == "2026-03-03T12:00:00Z"
    assert dumped["children"] == [{"pid": 11, "ppid": 10, "name": "pt_data_worker",
                                   "host_rss_mb": 512}]
    assert GpuProcess.model_validate(dumped) == proc

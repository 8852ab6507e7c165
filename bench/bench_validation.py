"""CPU of the ingest fast path alone: orjson parse + column-wise validation, per batch.

    .venv/bin/python bench/bench_validation.py

Runs in one process with no server, so it can be compared between two trees on a busy
box (best of many repeats of CPU time, not wall time): run it in each tree's venv,
one after the other, and compare the figures.
"""

from __future__ import annotations

import inspect
import time
from datetime import UTC, datetime, timedelta

import orjson

from gpufleet.server.api import validation

NOW = datetime.now(UTC)


def body(count: int) -> bytes:
    """``count`` fully filled samples of 4 GPUs, one second apart, as the agent sends them."""
    t0 = NOW - timedelta(hours=1)
    return orjson.dumps([{
        "timestamp": (t0 + timedelta(seconds=i // 4)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "gpu_index": i % 4, "gpu_uuid": f"GPU-{i % 4:08d}-1111-2222-3333-444444444444",
        "gpu_name": "NVIDIA A100-SXM4-80GB", "power_draw_w": 312.5, "power_limit_w": 400,
        "energy_delta_j": 18750, "utilization_gpu_pct": 87, "utilization_memory_pct": 62,
        "temperature_c": 71, "memory_used_mb": 51200, "memory_total_mb": 81920,
        "fan_speed_pct": 30, "sm_clock_mhz": 1410, "memory_clock_mhz": 1593,
        "job_id": "job_train_llama3", "team_id": "ml-infra", "model_tag": "llama3-70b-finetune",
        "scheduler_source": "kubernetes", "hostname": "dgx-01"} for i in range(count)])


def best_ms(raw: bytes, repeats: int = 30, inner: int = 20) -> float:
    """The best mean CPU time of one parse + validation, in ms."""
    extra = {"max_depth": 32} if "max_depth" in inspect.signature(
        validation.validate_rows_and_columns).parameters else {}
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(inner):
            validation.validate_rows_and_columns(orjson.loads(raw), max_samples=10_000, now=NOW,
                                                 finite=True, **extra)
        best = min(best, (time.process_time() - start) / inner)
    return best * 1e3


def main() -> None:
    for count in (1000, 100):
        ms = best_ms(body(count))
        print(f"{count:5d} samples/body  parse + validate {ms:.3f} ms CPU "
              f"({count / ms * 1e3:,.0f} samples/s on one core)")


if __name__ == "__main__":
    main()

"""The store alone: writer throughput (group commit) and bytes on disk per stored sample.

    .venv/bin/python bench/bench_storage.py [--samples 1000000] [--batch 1000] [--concurrency 16]

Batches are built before the clock starts (the API's JSON parsing and validation
are measured by the HTTP bench); ``concurrency`` submitters await the writer
like concurrent ingest requests do.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gpufleet.server.store import MetricsStore

TEAMS = ["ml-infra", "inference", "research", "data-science"]
MODELS = ["llama3-70b-finetune", "qwen-3.5-27b", "sdxl-base", "bge-embed", None]
NAMES = ["NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3", "NVIDIA L40S", "NVIDIA L4"]


def make_batches(total: int, batch: int, gpus: int, start: datetime) -> list[list[dict[str, Any]]]:
    """Agent-like batches: every GPU's samples 60 s apart, values as JSON would give them."""
    batches: list[list[dict[str, Any]]] = []
    for first in range(0, total, batch):
        rows = []
        for n in range(first, min(first + batch, total)):
            gpu, step = n % gpus, n // gpus
            rows.append({
                "timestamp": start + timedelta(seconds=60 * step),
                "gpu_index": gpu % 8, "gpu_uuid": f"GPU-{gpu:08x}",
                "power_draw_w": 120.5 + (n * 7) % 500, "utilization_gpu_pct": (n * 13) % 101,
                "utilization_memory_pct": (n * 5) % 101, "temperature_c": 40 + n % 40,
                "memory_used_mb": 1024 * (n % 80), "gpu_name": NAMES[gpu % 4],
                "power_limit_w": 400, "energy_delta_j": 18000.0 + n % 900,
                "memory_total_mb": 81920, "sm_clock_mhz": 1410, "memory_clock_mhz": 1593,
                "job_id": f"job-{gpu % 12}", "team_id": TEAMS[gpu % 4],
                "model_tag": MODELS[gpu % 5], "scheduler_source": "kubernetes",
            })
        batches.append(rows)
    return batches


async def ingest(store: MetricsStore, batches: list[list[dict[str, Any]]], concurrency: int) -> float:
    queue: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
    for b in batches:
        queue.put_nowait(b)
    now = datetime.now(UTC)

    async def worker() -> None:
        while not queue.empty():
            await store.writer.submit("bench", queue.get_nowait(), now)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


def db_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--gpus", type=int, default=232)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.duckdb"
        batches = make_batches(args.samples, args.batch, args.gpus, datetime(2026, 1, 1, tzinfo=UTC))
        store = MetricsStore.open(path)
        elapsed = asyncio.run(ingest(store, batches, args.concurrency))
        stored = store.sample_count("bench")
        resent = asyncio.run(ingest(store, batches[:50], args.concurrency))
        store.close()
        size = db_bytes(path)
        print(f"samples={args.samples} batch={args.batch} concurrency={args.concurrency} cpus={os.cpu_count()}")
        print(f"ingest: {elapsed:.2f} s, {args.samples / elapsed:,.0f} samples/s, stored {stored:,}")
        print(f"resend of {50 * args.batch:,} duplicates: {50 * args.batch / resent:,.0f} samples/s")
        print(f"on disk after close (checkpointed): {size:,} bytes, {size / max(stored, 1):.1f} bytes/sample")


if __name__ == "__main__":
    main()

"""What a Prometheus scrape of GET /metrics costs on a node with 8 GPUs.

One ServerApp over a fresh store, serving a simulated 8-GPU node, in its own thread;
every route has been called once so the request/latency families are as full as on a
working server. Then:
1. the server side alone: the route's handler, dispatched in-process, N times;
2. end to end: one httpx client on one keep-alive connection, N sequential scrapes
   (text format, then OpenMetrics).
GPU readings come from the feed (refreshed every [metrics] refresh_s), so a scrape
makes no NVML call: the figures are rendering and HTTP.

    .venv/bin/python bench/bench_metrics.py [--scrapes 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from gpufleet.server.app import ServerApp
from gpufleet.server.config import Settings
from gpufleet.server.gpu.simulated import simulated_backends
from gpufleet.server.http.types import Request
from gpufleet.server.metrics.exposition import OPENMETRICS_CONTENT_TYPE
from gpufleet.server.store import MetricsStore

ROUTES = ["/v1/gpu/status", "/v1/gpu/memory", "/v1/metrics/ingest", "/v1/agent/hosts",
          "/v1/chargeback/report?from=2026-01-01&to=2026-01-31", "/v1/openapi.json", "/nope"]


def percentiles(samples_ms: list[float]) -> str:
    ordered = sorted(samples_ms)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(ordered):.3f} ms, p99 {p99:.3f} ms, max {ordered[-1]:.3f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=2000)
    args = parser.parse_args()
    backend = simulated_backends(9, 8)[-1]  # a synthetic node with exactly 8 GPUs
    settings = Settings().with_overrides({"sampler.enabled": False})
    with tempfile.TemporaryDirectory() as tmp, MetricsStore.open(Path(tmp) / "b.duckdb") as store:
        key = store.create_key("bench", ["operator"], "default").key
        loop = asyncio.new_event_loop()
        app = ServerApp(settings, backend=backend, store=store)
        loop.run_until_complete(app.start("127.0.0.1", 0))
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=app.url, timeout=10.0) as http:
            for path in ROUTES:
                http.get(path, headers=headers)
            first = http.get("/metrics")
            lines = sum(1 for line in first.text.splitlines() if not line.startswith("#"))
            print(f"GPUs {len(backend.snapshot().gpus)}; one scrape: {len(first.content):,} bytes, "
                  f"{lines} series")

            async def dispatch_many(count: int) -> list[float]:
                times = []
                for _ in range(count):
                    request = Request(method="GET", target="/metrics", path="/metrics", query={},
                                      headers={}, client=("127.0.0.1", 1))
                    started = time.perf_counter()
                    response = await app.http.dispatch(request)
                    times.append((time.perf_counter() - started) * 1000)
                    assert response.status == 200
                return times

            handler = asyncio.run_coroutine_threadsafe(dispatch_many(args.scrapes), loop).result()
            print(f"server side (dispatch + render), {args.scrapes} scrapes: {percentiles(handler)}")
            for label, accept in (("text 0.0.4", None), ("OpenMetrics", OPENMETRICS_CONTENT_TYPE)):
                times = []
                for _ in range(args.scrapes):
                    started = time.perf_counter()
                    response = http.get("/metrics", headers={"Accept": accept} if accept else {})
                    times.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200
                print(f"end to end over HTTP, {label}, {args.scrapes} scrapes: {percentiles(times)}")
        asyncio.run_coroutine_threadsafe(app.stop(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()


if __name__ == "__main__":
    main()

"""Requests/s and latency of the HTTP core: N keep-alive raw-socket clients against a server.

The server runs in a child process (its own core), the clients in this one:

    .venv/bin/python bench/bench_http.py --concurrency 16 --seconds 5
    .venv/bin/python bench/bench_http.py --post-kb 400 --concurrency 4

``GET /bench`` answers a ~1.5 KB JSON document (the size of a small /v1/gpu/status);
``POST /ingest`` reads the whole body and answers a short JSON acknowledgement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STATUS_LIKE = {"gpus": [{"index": i, "name": "NVIDIA H100 80GB HBM3", "uuid": f"GPU-{i:032x}",
                         "memory": {"total_mb": 81920, "used_mb": 45056, "free_mb": 36864},
                         "utilization_pct": 87, "temperature_c": 71, "power_w": 612.5}
                        for i in range(8)]}


async def serve() -> None:
    from gpufleet.server.config import Limits
    from gpufleet.server.http.router import Router
    from gpufleet.server.http.server import HttpServer
    from gpufleet.server.http.types import Request, Response

    body = json.dumps(STATUS_LIKE, separators=(",", ":")).encode()

    async def bench(request: Request) -> Response:
        return Response(body=body)

    async def ingest(request: Request) -> Response:
        return Response.json({"accepted": len(request.body)})

    async def passthrough(request: Request, call_next):  # one middleware, as auth will be
        return await call_next(request)

    router = Router()
    router.get("/bench", bench)
    router.post("/ingest", ingest)
    logging.getLogger("gpufleet.access").setLevel(logging.INFO)
    logging.getLogger("gpufleet.access").addHandler(logging.NullHandler())
    server = HttpServer(router, Limits(max_body_bytes=16 * 1024 * 1024), middleware=[passthrough])
    _, port = await server.start("127.0.0.1", 0)
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until parent closes
    await server.shutdown()


async def client(port: int, request: bytes, stop_at: float, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
        await reader.readexactly(length)
        latencies.append(time.perf_counter() - started)
    writer.close()


async def drive(port: int, concurrency: int, seconds: float, post_kb: int) -> None:
    if post_kb:
        payload = b"[" + b",".join([b'{"gpu_uuid":"GPU-0","power_draw_w":300.5}'] * 10_000) + b"]"
        payload = (payload * (post_kb * 1024 // len(payload) + 1))[: post_kb * 1024]
        request = (b"POST /ingest HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n" % len(payload)) + payload
    else:
        request = b"GET /bench HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer x\r\n\r\n"
    await client(port, request, time.perf_counter() + 0.5, [])  # warm up
    latencies: list[float] = []
    started = time.perf_counter()
    await asyncio.gather(*(client(port, request, started + seconds, latencies)
                           for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    pct = statistics.quantiles(latencies, n=100)
    what = f"POST {post_kb} KB" if post_kb else "GET /bench"
    print(f"{what}: concurrency={concurrency} requests={len(latencies)} "
          f"rps={len(latencies) / elapsed:.0f} p50={pct[49] * 1000:.2f}ms "
          f"p99={pct[98] * 1000:.2f}ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--post-kb", type=int, default=0, help="POST bodies of this size instead")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve())
        return 0
    child = subprocess.Popen([sys.executable, __file__, "--serve"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        asyncio.run(drive(port, args.concurrency, args.seconds, args.post_kb))
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Latency and requests/s of GET /v1/gpu/status on this machine.

Serves one simulated node with `gpufleet simulate --nodes 1` in its own process, then:
1. one httpx client on one keep-alive connection, N sequential requests: latency p50/p99;
2. wrk at 1, 16 and 64 connections: requests/s and p50/p99 (when wrk is installed).

    .venv/bin/python bench/bench_gpu_status.py [--requests 2000] [--duration 10]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
_REQS = re.compile(r"Requests/sec:\s+([\d.]+)")
_PCT = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
_NODE_LINE = re.compile(r"^\S+ (https?://\S+)$")  # "ws-gpu-01 http://127.0.0.1:41234"


def start_node(workdir: Path) -> tuple[subprocess.Popen[str], str, str]:
    token_file = workdir / "token"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpufleet.server.cli", "simulate", "--nodes", "1", "--token-file",
         str(token_file), "--nodes-file", str(workdir / "nodes.toml")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    try:
        url = first_node_url(proc.stdout)
    except RuntimeError:
        proc.kill()
        proc.wait()
        raise
    return proc, url, token_file.read_text().strip()


def first_node_url(stdout: Iterable[str]) -> str:
    """The URL of the first ``<node name> <url>`` line ``gpufleet simulate`` prints.

    Lines before the nodes (token and nodes files, a curl hint) may change in number or
    wording; a node line is exactly two fields, the second an http(s) URL.
    """
    seen: list[str] = []
    for line in stdout:
        seen.append(line)
        match = _NODE_LINE.match(line.strip())
        if match:
            return match.group(1)
    raise RuntimeError("gpufleet simulate printed no node line:\n" + "".join(seen))


def sequential(url: str, token: str, count: int) -> list[float]:
    headers = {"Authorization": f"Bearer {token}"}
    timings = []
    with httpx.Client(base_url=url, headers=headers) as client:
        for _ in range(50):  # warm up
            client.get("/v1/gpu/status").raise_for_status()
        for _ in range(count):
            start = time.perf_counter()
            client.get("/v1/gpu/status").raise_for_status()
            timings.append((time.perf_counter() - start) * 1000)
    return timings


def wrk(url: str, token: str, connections: int, duration: int) -> str:
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(connections), "-d", f"{duration}s", "--latency",
         "-H", f"Authorization: Bearer {token}", f"{url}/v1/gpu/status"],
        capture_output=True, text=True, check=True).stdout
    rate = _REQS.search(out)
    pcts = {p: float(v) * _UNIT_MS[u] for p, v, u in _PCT.findall(out)}
    if "Non-2xx" in out or not rate:
        return f"unexpected wrk output:\n{out}"
    return (f"wrk {connections:>3} connections: {float(rate.group(1)):8.0f} req/s  "
            f"p50 {pcts.get('50', float('nan')):6.2f} ms  p99 {pcts.get('99', float('nan')):6.2f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--duration", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpufleet-bench-") as tmp:
        proc, url, token = start_node(Path(tmp))
        try:
            body = httpx.get(f"{url}/v1/gpu/status", headers={"Authorization": f"Bearer {token}"})
            print(f"{os.cpu_count()} CPUs; status body {len(body.content)} bytes, "
                  f"{body.json()['total_gpus']} GPUs (simulated node {body.json()['node']['hostname']})")
            timings = sorted(sequential(url, token, args.requests))
            p99 = timings[int(len(timings) * 0.99) - 1]
            print(f"httpx sequential, 1 keep-alive connection, {len(timings)} requests: "
                  f"p50 {statistics.median(timings):.2f} ms  p99 {p99:.2f} ms  "
                  f"{1000 / statistics.mean(timings):.0f} req/s")
            if shutil.which("wrk") is None:
                print("wrk not found (apt-get install -y wrk): skipping the concurrent runs")
                return 0
            for connections in (1, 16, 64):
                print(wrk(url, token, connections, args.duration), flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())

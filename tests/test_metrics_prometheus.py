"""A real Prometheus server scrapes a real ``gpufleet serve`` and answers a DCGM query.

Skipped where the ``prometheus`` binary is absent (Debian: ``apt-get install prometheus``).
About 6 s, most of it Prometheus's own: its discovery manager hands new targets to the
scrape manager on a fixed 5-second tick, which no flag shortens.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.serve_process import start_serve

PROMETHEUS = shutil.which("prometheus")
DEADLINE_S = 20.0  # Prometheus starts, finds its target (~5 s) and scrapes every 200 ms


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _poll(what: str, check, deadline: float):  # type: ignore[no-untyped-def]
    """``check()``'s first truthy answer, asked again until ``deadline``; fails saying ``what``."""
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except httpx.HTTPError as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {DEADLINE_S} s (last: {last!r})")


@pytest.mark.skipif(PROMETHEUS is None, reason="the prometheus binary is not installed")
def test_prometheus_scrapes_serve_and_answers_a_dcgm_query(tmp_path: Path) -> None:
    serve = start_serve(tmp_path / "p.duckdb", "--no-sampler")
    prometheus = None
    try:
        target = serve.url.removeprefix("http://")
        port = _free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 200ms\n  scrape_timeout: 200ms\n"
            "scrape_configs:\n  - job_name: gpufleet\n"
            f"    static_configs:\n      - targets: ['{target}']\n")
        prometheus = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        api = f"http://127.0.0.1:{port}/api/v1"
        deadline = time.monotonic() + DEADLINE_S

        def gpu_util() -> list[dict]:
            response = httpx.get(f"{api}/query", params={"query": "DCGM_FI_DEV_GPU_UTIL"},
                                 timeout=2.0)
            if response.status_code != 200:  # "Service Unavailable" (text) until its TSDB is open
                return []
            answer = response.json()
            return answer["data"]["result"] if answer.get("status") == "success" else []

        series = _poll("DCGM_FI_DEV_GPU_UTIL through Prometheus", gpu_util, deadline)
        labels = series[0]["metric"]
        assert {"gpu", "UUID", "device", "modelName", "Hostname"} <= set(labels)
        assert labels["job"] == "gpufleet" and labels["instance"] == target
        assert 0 <= float(series[0]["value"][1]) <= 100
        targets = httpx.get(f"{api}/targets", timeout=2.0).json()["data"]["activeTargets"]
        assert [(t["health"], t["lastError"]) for t in targets] == [("up", "")]
    finally:
        if prometheus is not None:
            prometheus.terminate()
            try:
                prometheus.wait(timeout=10)
            except subprocess.TimeoutExpired:
                prometheus.kill()
                prometheus.wait()
        serve.proc.terminate()
        serve.wait_exit()

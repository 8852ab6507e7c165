"""SIGKILL under sustained concurrent ingest: every acknowledged sample is stored, no batch half-stored."""

from __future__ import annotations

import signal
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from gpufleet.server.store import MetricsStore
from tests.serve_process import start_serve

CLIENTS = 3
BATCH = 200
ACKED_BEFORE_KILL = 30  # batches acknowledged in all before the kill
WAIT_S = 60.0


def _batch(client: int, number: int, base: datetime) -> list[dict[str, object]]:
    batch_id = f"crash-{client}-{number}"
    start = base + timedelta(seconds=number * BATCH)
    return [{"timestamp": (start + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
             "gpu_index": client, "gpu_uuid": f"GPU-crash-{client}", "power_draw_w": 200,
             "utilization_gpu_pct": 50, "utilization_memory_pct": 20, "temperature_c": 55,
             "memory_used_mb": 1000, "job_id": batch_id} for i in range(BATCH)]


def test_sigkill_loses_no_acknowledged_batch_and_splits_none(tmp_path: Path) -> None:
    db = tmp_path / "db.duckdb"
    settings_file = tmp_path / "config.toml"
    settings_file.write_text("[rate_limits.ingest]\nrequests = 100000\nper_s = 60\n")
    with MetricsStore.open(db) as store:
        key = store.create_key("crash", ["ingest"], "default").key
    server = start_serve(db, "--no-sampler", "--config", str(settings_file))
    base = datetime.now(UTC) - timedelta(days=20)
    acked: list[str] = []
    sent: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    enough = threading.Event()

    def client(number: int) -> None:
        with httpx.Client(base_url=server.url, headers={"X-API-Key": key}, timeout=10) as http:
            n = 0
            while not stop.is_set():
                batch = _batch(number, n, base)
                with lock:
                    sent.append(f"crash-{number}-{n}")
                try:
                    response = http.post("/v1/metrics/ingest", json=batch)
                except httpx.HTTPError:
                    return  # the server is gone
                if response.status_code == 200 and response.json()["inserted"] == BATCH:
                    with lock:
                        acked.append(f"crash-{number}-{n}")
                        if len(acked) >= ACKED_BEFORE_KILL:
                            enough.set()
                n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        assert enough.wait(WAIT_S), "the server never acknowledged enough batches"
        server.proc.send_signal(signal.SIGKILL)  # mid-stream: requests are in flight
        server.proc.wait(timeout=30)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        if server.proc.poll() is None:
            server.proc.kill()
    assert server.proc.returncode == -signal.SIGKILL

    with MetricsStore.open(db) as store:  # the restart: recovery from DuckDB's WAL
        rows = store.query("SELECT job_id, count(*) FROM samples GROUP BY job_id")
        total = store.sample_count()
    stored = Counter({job: int(count) for job, count in rows})
    missing = [batch for batch in acked if stored.get(batch) != BATCH]
    assert not missing, f"acknowledged batches lost or partial: {missing[:5]}"
    partial = {job: n for job, n in stored.items() if n != BATCH}
    assert not partial, f"half-stored batches: {partial}"
    assert set(stored) <= set(sent)
    assert total == BATCH * len(stored) >= BATCH * len(acked)

    # and the restarted server serves the same store
    restarted = start_serve(db, "--no-sampler")
    try:
        assert httpx.get(f"{restarted.url}/v1/metrics/ingest", timeout=10).status_code == 200
    finally:
        restarted.proc.send_signal(signal.SIGTERM)
    assert restarted.wait_exit() == 0

"""A full disk is an answer: 507 with Retry-After, logged once, readyz 503, recovery after.

The real case runs the store on a tiny tmpfs (when the test runs as root and may mount);
everywhere, the same path is driven by an injected ENOSPC from DuckDB.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from gpufleet.server.agent.delivery import Delivery, Step
from gpufleet.server.agent.runner import encode_batch
from gpufleet.server.agent.spool import Spool
from gpufleet.server.client import AsyncGpuFleetClient
from gpufleet.server.store import MetricsStore
from gpufleet.server.store import writer as writer_mod
from tests.api_server import store_app

NOW = datetime.now(UTC).replace(microsecond=0)
ENOSPC_TEXT = 'IO Error: Could not write file "gpufleet.duckdb.wal": No space left on device'


def batch(first: int, count: int, *, job: str = "job") -> list[dict[str, Any]]:
    start = NOW - timedelta(days=2)
    return [{"timestamp": (start + timedelta(seconds=first + i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
             "gpu_index": 0, "gpu_uuid": f"GPU-{(first + i) % 4}", "power_draw_w": 300.0,
             "utilization_gpu_pct": 80, "utilization_memory_pct": 50, "temperature_c": 60,
             "memory_used_mb": 1000, "job_id": job} for i in range(count)]


class DiskFault:
    """DuckDB's own wording of ENOSPC from every sample write while ``on``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.on = False
        for name in ("write_fresh", "write_careful"):
            real = getattr(writer_mod, name)
            monkeypatch.setattr(writer_mod, name, self._wrap(real))

    def _wrap(self, real: Any) -> Any:
        def write(*args: Any) -> Any:
            if self.on:
                raise duckdb.IOException(ENOSPC_TEXT)
            return real(*args)
        return write


def _full_disk_answers(response: Any) -> None:
    assert response.status_code == 507, response.text
    assert response.headers["retry-after"] == "30"
    assert response.json() == {"error": "Insufficient storage: the server cannot write to its store "
                                        "(disk full or I/O error); nothing was stored, retry later"}


async def test_an_injected_enospc_is_507_once_logged_readyz_503_and_heals(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    fault = DiskFault(monkeypatch)
    async with store_app(tmp_path / "db.duckdb") as srv:
        headers = srv.auth("ingest")
        assert (await srv.http.post("/v1/metrics/ingest", json=batch(0, 10), headers=headers)).status_code == 200
        ready = await srv.http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        fault.on = True
        with caplog.at_level(logging.INFO):
            for first in (10, 20, 30):
                _full_disk_answers(await srv.http.post("/v1/metrics/ingest", json=batch(first, 10),
                                                       headers=headers))
            not_ready = await srv.http.get("/readyz")
            assert not_ready.status_code == 503
            assert not_ready.json()["checks"]["store_writable"] is False
            assert "cannot write" in not_ready.json()["error"]
            assert (await srv.http.get("/healthz")).json() == {"status": "ok"}
            fault.on = False
            again = await srv.http.post("/v1/metrics/ingest", json=batch(10, 30), headers=headers)
            assert again.status_code == 200 and again.json()["inserted"] == 30
        said = [r.getMessage() for r in caplog.records if "cannot write" in r.getMessage()]
        assert len(said) == 1, said  # once per episode, not per request
        assert not any(r.exc_info for r in caplog.records)  # no traceback per request
        assert "writes again" in caplog.text
        assert (await srv.http.get("/readyz")).status_code == 200
        assert srv.app.store.sample_count("default") == 40


async def test_the_agent_keeps_a_507_batch_and_waits_the_retry_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fault = DiskFault(monkeypatch)
    async with store_app(tmp_path / "db.duckdb") as srv:
        with Spool(tmp_path / "spool", max_bytes=1 << 20) as spool:
            spool.append(encode_batch(batch(0, 5)), 5)
            async with AsyncGpuFleetClient(srv.url, api_key=srv.keys["ingest"]) as client:
                delivery = Delivery(spool, client)
                fault.on = True
                step, delay = await delivery.step()
                assert step is Step.RETRY and delay >= 30  # the server's Retry-After is a floor
                assert spool.stats.pending_records == 1
                fault.on = False
                assert (await delivery.step())[0] is Step.SENT
        assert srv.app.store.sample_count("default") == 5


@contextlib.contextmanager
def tiny_filesystem(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a tiny filesystem needs root to mount (the injected ENOSPC test covers the path)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                              str(where)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(folder: Path, leave_bytes: int) -> Path:
    """A file taking all but ``leave_bytes`` of the filesystem's free space."""
    filler = folder / "filler"
    fs = os.statvfs(folder)
    free = fs.f_bavail * fs.f_frsize
    with open(filler, "wb") as out:
        out.write(b"\0" * max(0, free - leave_bytes))
    return filler


async def test_a_store_on_a_full_filesystem_answers_507_and_recovers_when_space_returns(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with tiny_filesystem(tmp_path / "fs", "8m") as fs:
        db = fs / "gpufleet.duckdb"
        async with store_app(db) as srv:
            headers = srv.auth("ingest")
            assert (await srv.http.post("/v1/metrics/ingest", json=batch(0, 100),
                                        headers=headers)).status_code == 200
            filler = _fill(fs, 256 * 1024)
            acked, first, refused = 100, 100, None
            with caplog.at_level(logging.INFO):
                for _ in range(40):  # ~80 KB of WAL a batch: full well before the bound
                    response = await srv.http.post("/v1/metrics/ingest", json=batch(first, 500, job="j" * 100),
                                                   headers=headers)
                    if response.status_code != 200:
                        refused = response
                        break
                    acked += 500
                    first += 500
                assert refused is not None, "the filesystem never filled"
                _full_disk_answers(refused)
                _full_disk_answers(await srv.http.post("/v1/metrics/ingest",
                                                       json=batch(first, 500, job="j" * 100),
                                                       headers=headers))
                assert (await srv.http.get("/readyz")).status_code == 503
                assert (await srv.http.get("/healthz")).status_code == 200
                hosts = await srv.http.get("/v1/agent/hosts", headers=srv.auth("read"))
                assert hosts.status_code in (200, 507)  # reads go on; never a 500
                filler.unlink()  # space returns: the same batch is stored, once
                again = await srv.http.post("/v1/metrics/ingest", json=batch(first, 500, job="j" * 100),
                                            headers=headers)
                assert again.status_code == 200, again.text
                acked += again.json()["inserted"]
            said = [r for r in caplog.records if "cannot write" in r.getMessage()]
            assert len(said) == 1
            assert not any(r.exc_info for r in caplog.records)
            assert (await srv.http.get("/readyz")).status_code == 200
        with MetricsStore.open(db) as store:  # integrity: every acknowledged sample, once
            assert store.sample_count("default") == acked
            total, distinct = store.query(
                "SELECT count(*), count(DISTINCT (gpu_uuid, ts)) FROM samples")[0]
            assert total == distinct

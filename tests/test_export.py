"""gpufleet export: hive-partitioned Parquet, incremental, read back by DuckDB."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import httpx
import pytest

from gpufleet.server.api.validation import validate_batch
from gpufleet.server.cli import main
from gpufleet.server.export_sources import ServerSource, StoreSource
from gpufleet.server.exporter import LOCK_FILE, TMP_DIR, ExportError, export
from gpufleet.server.store import MetricsStore
from tests.api_server import store_app
from tests.serve_process import start_serve

DAY1 = datetime(2026, 11, 1, tzinfo=UTC)


def _samples(start: datetime, count: int, *, gpus: int = 2, team: str = "vision") -> list[dict]:
    return [{"timestamp": (start + timedelta(minutes=m)).strftime("%Y-%m-%dT%H:%M:%SZ"),
             "gpu_index": g, "gpu_uuid": f"GPU-exp-{g}", "power_draw_w": 200.0 + g,
             "utilization_gpu_pct": 50, "utilization_memory_pct": 20, "temperature_c": 60,
             "memory_used_mb": 1000, "gpu_name": "NVIDIA H100 80GB HBM3", "team_id": team}
            for m in range(count) for g in range(gpus)]


def _store(store: MetricsStore, account: str, samples: list[dict], received: datetime) -> None:
    rows = validate_batch(samples, max_samples=len(samples), now=received + timedelta(days=400))
    store.writer.submit_sync(account, rows, received)


def _parquet(root: Path, table: str) -> duckdb.DuckDBPyRelation:
    return duckdb.sql(f"SELECT * FROM read_parquet('{root}/{table}/**/*.parquet', hive_partitioning=true)")


def _files(root: Path, table: str) -> list[Path]:
    return sorted((root / table).rglob("*.parquet"))


def _filled(path: Path) -> Path:
    with MetricsStore.open(path) as store:
        for day in range(3):
            _store(store, "default", _samples(DAY1 + timedelta(days=day, hours=23, minutes=50), 20),
                   DAY1 + timedelta(days=day + 1, hours=1))
        _store(store, "acme", _samples(DAY1 + timedelta(hours=6), 5, team="acme-ml"),
               DAY1 + timedelta(hours=7))
    return path


def _usage_in_store(path: Path) -> list[tuple]:
    with MetricsStore.open(path) as store:
        store.writer.sync_rollup()
        return sorted(store.query("SELECT account, day, gpu_uuid, team_id, covered_us, energy_j "
                                  "FROM usage_daily"))


def test_export_writes_every_row_by_name_partitioned_by_account_and_day(tmp_path: Path, capsys) -> None:
    db = _filled(tmp_path / "s.duckdb")
    out = tmp_path / "lake"
    assert main(["export", "--output", str(out), "--db", str(db)]) == 0
    assert "exported 130 new samples" in capsys.readouterr().out
    with MetricsStore.open(db) as store:
        columns = [r[0] for r in store.query("DESCRIBE samples")]
        stored = sorted(store.query("SELECT account, CAST(ts AS DATE), count(*) FROM samples GROUP BY ALL"))
    samples = _parquet(out, "samples")
    # every stored column, by name (a column added later flows through), plus the hive day
    assert set(samples.columns) == {*columns, "day"}
    assert sorted(samples.query("samples", "SELECT account, day, count(*) FROM samples "
                                "GROUP BY ALL").fetchall()) == stored
    ts_type = dict(zip(samples.columns, samples.types, strict=True))["ts"]
    assert str(ts_type) == "TIMESTAMP WITH TIME ZONE"
    got = sorted(_parquet(out, "usage_daily").query(
        "usage", "SELECT account, day, gpu_uuid, team_id, covered_us, energy_j FROM usage").fetchall())
    assert got == _usage_in_store(db)
    assert (out / "samples" / "account=acme" / "day=2026-11-01").is_dir()


def test_a_second_run_writes_only_what_is_new_late_samples_included(tmp_path: Path) -> None:
    db = _filled(tmp_path / "s.duckdb")
    out = tmp_path / "lake"
    with MetricsStore.open(db) as store:
        first = export(StoreSource(store, None), out)
        files = _files(out, "samples")
        usage_mtimes = {p: p.stat().st_mtime_ns for p in _files(out, "usage_daily")}
        again = export(StoreSource(store, None), out)
        assert (again.sample_files, again.samples, again.usage_files) == (0, 0, 0)
        assert _files(out, "samples") == files
        # a late sample for Nov 2 (already exported) and a new day
        _store(store, "default", _samples(DAY1 + timedelta(days=1, hours=12), 1, gpus=1),
               DAY1 + timedelta(days=10))
        _store(store, "default", _samples(DAY1 + timedelta(days=9), 3), DAY1 + timedelta(days=10))
        third = export(StoreSource(store, None), out)
        total = store.sample_count()
    assert (third.sample_files, third.samples) == (2, 7)
    assert first.samples + third.samples == total
    late_day = out / "samples" / "account=default" / "day=2026-11-02"
    assert len(list(late_day.glob("*.parquet"))) == 2
    rows = duckdb.sql(f"SELECT count(*), count(DISTINCT (account, gpu_uuid, ts)) FROM "
                      f"read_parquet('{out}/samples/**/*.parquet', hive_partitioning=true)").fetchall()[0]
    assert rows == (total, total)
    changed = [p for p in _files(out, "usage_daily")
               if p not in usage_mtimes or p.stat().st_mtime_ns != usage_mtimes[p]]
    assert {p.parent.name for p in changed} >= {"day=2026-11-02", "day=2026-11-10"}
    assert sorted(_parquet(out, "usage_daily").query(
        "usage", "SELECT account, day, gpu_uuid, team_id, covered_us, energy_j FROM usage"
    ).fetchall()) == _usage_in_store(db)


def test_from_and_to_pick_days_and_a_bad_flag_is_exit_2(tmp_path: Path, capsys) -> None:
    db = _filled(tmp_path / "s.duckdb")
    out = tmp_path / "lake"
    assert main(["export", "-o", str(out), "--db", str(db), "--from", "2026-11-02",
                 "--to", "2026-11-02", "--account", "default"]) == 0
    days = {p.name for p in (out / "samples" / "account=default").iterdir()}
    assert days == {"day=2026-11-02"} and not (out / "samples" / "account=acme").exists()
    assert main(["export", "-o", str(out), "--db", str(db), "--to", str(out)]) == 2
    assert "the destination folder is --output DIR" in capsys.readouterr().err
    assert main(["export", "-o", str(out), "--db", str(db), "--from", "2026-11-03",
                 "--to", "2026-11-01"]) == 2
    assert main(["export", "-o", str(out), "--db", str(tmp_path / "none.duckdb")]) == 1


def test_a_crashed_runs_leftovers_go_and_two_runs_never_share_a_folder(tmp_path: Path) -> None:
    import fcntl

    db = _filled(tmp_path / "s.duckdb")
    out = tmp_path / "lake"
    (out / TMP_DIR).mkdir(parents=True)
    (out / TMP_DIR / "half.parquet").write_bytes(b"PAR1 half")
    with MetricsStore.open(db) as store:
        export(StoreSource(store, None), out)
        assert not (out / TMP_DIR).exists()
        with open(out / LOCK_FILE, "a") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            with pytest.raises(ExportError, match="another gpufleet export"):
                export(StoreSource(store, None), out)
    assert _parquet(out, "samples").count("*").fetchall() == [(130,)]


def test_export_db_goes_through_the_server_that_holds_the_store(tmp_path: Path, capsys) -> None:
    db = _filled(tmp_path / "held.duckdb")
    out = tmp_path / "lake"
    serve = start_serve(db, "--no-sampler")
    try:
        assert main(["export", "-o", str(out), "--db", str(db)]) == 0
        assert "exported 130 new samples" in capsys.readouterr().out
        assert main(["export", "-o", str(out), "--db", str(db)]) == 0
        assert "exported 0 new samples" in capsys.readouterr().out
    finally:
        serve.proc.terminate()
        serve.wait_exit()
    accounts = duckdb.sql(f"SELECT account, count(*) FROM read_parquet('{out}/samples/**/*.parquet', "
                          "hive_partitioning=true) GROUP BY ALL ORDER BY 1").fetchall()
    assert accounts == [("acme", 10), ("default", 120)]


async def test_export_server_reads_the_keys_account_over_http(tmp_path: Path) -> None:
    async with store_app(tmp_path / "h.duckdb") as srv:
        store = srv.app.store
        assert store is not None
        await asyncio.to_thread(_store, store, "default", _samples(DAY1, 4), DAY1)
        await asyncio.to_thread(_store, store, "acme", _samples(DAY1, 3), DAY1)
        out = tmp_path / "lake"

        def run(role: str | None):  # type: ignore[no-untyped-def]
            headers = srv.auth(role) if role else {}
            with httpx.Client(base_url=srv.url, headers=headers, timeout=30) as http:
                return export(ServerSource(http, "/v1/export"), out)

        result = await asyncio.to_thread(run, "read")
        assert (result.samples, result.sample_files, result.usage_files) == (8, 1, 1)
        assert (await asyncio.to_thread(run, "read")).samples == 0
        # a late sample for the exported day: the next run brings exactly it
        await asyncio.to_thread(_store, store, "default", _samples(DAY1 + timedelta(hours=5), 1, gpus=1),
                                DAY1 + timedelta(days=3))
        late = await asyncio.to_thread(run, "read")
        assert (late.samples, late.sample_files, late.usage_files) == (1, 1, 1)
        with pytest.raises(ExportError, match="401"):
            await asyncio.to_thread(run, None)
        with pytest.raises(ExportError, match="403"):
            await asyncio.to_thread(run, "ingest")
        bad = await srv.http.get("/v1/export/samples", params={"day": "2026-13-01"},
                                 headers=srv.auth("read"))
        assert bad.status_code == 400 and "day" in bad.json()["error"]
        none = await srv.http.get("/v1/export/samples", params={"day": "2020-01-01"},
                                  headers=srv.auth("read"))
        assert none.status_code == 204
        for after in ("9223372036854775807", "-9223372036854775808"):
            edge = await srv.http.get("/v1/export/samples", headers=srv.auth("read"),
                                      params={"day": "2026-11-01", "after": after})
            assert edge.status_code in (200, 204), edge.text
        for bad in ({"day": "2026-11-01", "after": "1e9"}, {"from": "2026-11-02", "to": "2026-11-01"}):
            path = "/v1/export/samples" if "day" in bad else "/v1/export/days"
            refused = await srv.http.get(path, params=bad, headers=srv.auth("read"))
            assert refused.status_code == 400 and refused.json()["error"]
        far = await srv.http.get("/v1/export/days", headers=srv.auth("read"),
                                 params={"from": "0001-01-01", "to": "9999-12-31"})
        assert far.status_code == 200 and len(far.json()["days"]) == 1
        assert far.headers["x-gpufleet-simulated"] == "false" and far.json()["simulated"] is False
        await asyncio.to_thread(store.mark_simulated, "test")
        marked = await asyncio.to_thread(run, "read")
        assert marked.simulated and marked.samples == 0
    assert [p.name for p in (out / "samples").iterdir()] == ["account=default"]
    assert not list(Path(store.path.parent).glob(".export-*"))  # the server's temp files are gone


def test_an_account_name_is_percent_encoded_in_its_folder(tmp_path: Path) -> None:
    db = tmp_path / "a.duckdb"
    with MetricsStore.open(db) as store:
        _store(store, "ml/ops=1", _samples(DAY1, 2), DAY1)
        export(StoreSource(store, None), tmp_path / "lake")
    assert os.listdir(tmp_path / "lake" / "samples") == ["account=ml%2Fops%3D1"]
    accounts = _parquet(tmp_path / "lake", "samples").query(
        "s", "SELECT DISTINCT account FROM s").fetchall()
    assert accounts == [("ml/ops=1",)]  # hive readers decode it back


def test_a_full_disk_stops_the_export_with_one_line_and_no_half_file(tmp_path: Path, capsys) -> None:
    import subprocess

    db = _filled(tmp_path / "s.duckdb")
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs",
                                            str(tiny)], capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        assert main(["export", "-o", str(tiny / "lake"), "--db", str(db)]) == 1
        err = capsys.readouterr().err
        assert "no space left on the device" in err and "Traceback" not in err
        placed = [p for p in (tiny / "lake").rglob("*.parquet") if TMP_DIR not in p.parts]
        for path in placed:  # what made it into place is whole: DuckDB reads every file
            duckdb.sql(f"SELECT count(*) FROM read_parquet('{path}')").fetchall()
    finally:
        subprocess.run(["umount", str(tiny)], check=True)
    assert main(["export", "-o", str(tmp_path / "lake"), "--db", str(db)]) == 0


def test_an_export_of_simulated_data_says_so_and_the_folder_remembers(tmp_path: Path, capsys) -> None:
    import json

    db = _filled(tmp_path / "sim.duckdb")
    with MetricsStore.open(db) as store:
        store.mark_simulated("test")
    out = tmp_path / "lake"
    assert main(["export", "-o", str(out), "--db", str(db)]) == 0
    assert "SIMULATED data: not billable" in capsys.readouterr().out
    assert json.loads((out / "_gpufleet_export.json").read_text())["simulated"] is True
    real = _filled(tmp_path / "real.duckdb")
    assert main(["export", "-o", str(tmp_path / "real-lake"), "--db", str(real)]) == 0
    assert "SIMULATED" not in capsys.readouterr().out
    state = json.loads((tmp_path / "real-lake" / "_gpufleet_export.json").read_text())
    assert state["simulated"] is False


async def test_a_full_disk_under_the_servers_store_is_507_once_logged_and_heals(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The day's file is written in the store's folder: no room there is a 507, not a 500."""
    import contextlib
    import logging
    import subprocess

    from gpufleet.server.store.export import StoreExport

    folder = tmp_path / "fs"
    folder.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(folder)],
        capture_output=True).returncode == 0
    fault = {"on": False}
    if not mounted:  # DuckDB's own wording of ENOSPC, from the COPY
        for name in ("copy_samples", "copy_usage"):
            real = getattr(StoreExport, name)

            def failing(self, *args, _real=real):  # type: ignore[no-untyped-def]
                if fault["on"]:
                    raise duckdb.IOException('IO Error: Could not write file "x.parquet": '
                                             "No space left on device")
                return _real(self, *args)

            monkeypatch.setattr(StoreExport, name, failing)
    filler = folder / "filler"
    try:
        async with store_app(folder / "db.duckdb") as srv:
            await asyncio.to_thread(_store, srv.app.store, "default", _samples(DAY1, 200), DAY1)
            day = {"day": DAY1.date().isoformat()}
            read = srv.auth("read")
            assert (await srv.http.get("/v1/export/samples", params=day, headers=read)).status_code == 200
            if mounted:
                free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
                filler.write_bytes(b"\0" * free)
            fault["on"] = True
            with caplog.at_level(logging.INFO):
                for path in ("samples", "usage", "samples"):
                    full = await srv.http.get(f"/v1/export/{path}", params=day, headers=read)
                    assert full.status_code == 507, full.text
                    assert full.headers["retry-after"] == "30"
                    assert "Insufficient storage" in full.json()["error"]
                with contextlib.suppress(FileNotFoundError):
                    filler.unlink()
                fault["on"] = False
                healed = await srv.http.get("/v1/export/usage", params=day, headers=read)
                assert healed.status_code == 200
                assert healed.headers["x-gpufleet-rows"] == str(len(_usage_in_rollup(srv.app.store)))
            said = [r for r in caplog.records if "export file cannot be written" in r.getMessage()]
            assert len(said) == 1  # once per episode
            assert not any(r.exc_info for r in caplog.records)  # no traceback per request
            assert "can be written again" in caplog.text
            assert not list(folder.glob(".export-*"))
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=False)


def _usage_in_rollup(store: MetricsStore) -> list[tuple]:
    store.writer.sync_rollup()
    return store.query("SELECT * FROM usage_daily WHERE day = ?", [DAY1.date()])

"""Real data stays real: simulated data is refused by a real store, and a marked store's reports say so."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gpufleet.server.commands import report as report_cmd
from gpufleet.server.fleet import Fleet, default_fleet
from gpufleet.server.sample import load_sample_month, sample_fleet_gpu_uuids
from gpufleet.server.schemas import SIMULATED_HEADER
from gpufleet.server.store import MetricsStore
from gpufleet.server.store import simulated as marks
from tests.api_server import api_settings, store_app

NOW = datetime.now(UTC).replace(microsecond=0)
TODAY = NOW.date()
PERIOD = {"from": (TODAY - timedelta(days=2)).isoformat(), "to": TODAY.isoformat()}
SIMULATED = {SIMULATED_HEADER: "true"}


def samples(uuid: str = "GPU-real-0", minutes: int = 5) -> list[dict[str, Any]]:
    start = NOW - timedelta(minutes=minutes + 1)
    return [{"timestamp": (start + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
             "gpu_index": 0, "gpu_uuid": uuid, "gpu_name": "NVIDIA H100 80GB HBM3",
             "power_draw_w": 300.0, "utilization_gpu_pct": 90, "utilization_memory_pct": 50,
             "temperature_c": 60, "memory_used_mb": 1000, "team_id": "ml"} for i in range(minutes)]


def tiny_fleet() -> Fleet:
    """The described fleet cut to its first node and one job: a sample month in milliseconds."""
    fleet = default_fleet()
    node = fleet.nodes[0].model_copy(update={"gpus": fleet.nodes[0].gpus[:1]})
    jobs = [j.model_copy(update={"gpus": [0]}) for j in fleet.jobs if j.node == node.name][:1]
    return fleet.model_copy(update={"nodes": [node], "jobs": jobs})


async def test_a_real_server_refuses_simulated_samples_and_heartbeats(tmp_path: Path) -> None:
    db = tmp_path / "real.duckdb"
    async with store_app(db) as srv:
        ingest = {**srv.auth("ingest", header="x-api-key"), **SIMULATED}
        refused = await srv.http.post("/v1/metrics/ingest", headers=ingest, json=samples())
        assert refused.status_code == 409
        assert "stores real data only" in refused.json()["error"]
        beat = await srv.http.post("/v1/agent/heartbeat", headers=ingest,
                                   json={"agent_version": "0.1", "gpu_count": 1, "hostname": "sim"})
        assert beat.status_code == 409
        bad = await srv.http.post("/v1/metrics/ingest", headers={**ingest, SIMULATED_HEADER: "maybe"},
                                  json=samples())
        assert bad.status_code == 400 and SIMULATED_HEADER in bad.json()["error"]
        # real samples, marked false or not at all, go in as ever
        real = await srv.http.post("/v1/metrics/ingest", json=samples(),
                                   headers={**srv.auth("ingest"), SIMULATED_HEADER: "false"})
        assert real.status_code == 200 and real.json()["inserted"] == 5
        read = srv.auth("read", header="x-api-key")
        hosts = (await srv.http.get("/v1/agent/hosts", headers=read)).json()["hosts"]
        assert hosts == []
        report = await srv.http.get("/v1/chargeback/report", params=PERIOD, headers=read)
        assert report.json()["simulated"] is False and report.headers[SIMULATED_HEADER] == "false"
        csv = await srv.http.get("/v1/chargeback/report", params={**PERIOD, "format": "csv"},
                                 headers=read)
        assert csv.headers[SIMULATED_HEADER] == "false"
        assert srv.app.store is not None and srv.app.store.simulated is None
    with MetricsStore.open(db) as store:
        assert store.simulated is None and store.sample_count() == 5


async def test_a_simulate_server_takes_them_and_every_report_says_so(tmp_path: Path) -> None:
    db = tmp_path / "sim.duckdb"
    async with store_app(db, api_settings(**{"server.simulate": True})) as srv:
        ingest = {**srv.auth("ingest", header="x-api-key"), **SIMULATED}
        taken = await srv.http.post("/v1/metrics/ingest", headers=ingest, json=samples("GPU-sim"))
        assert taken.status_code == 200, taken.text
        read = srv.auth("read", header="x-api-key")
        report = await srv.http.get("/v1/chargeback/report", params=PERIOD, headers=read)
        assert report.json()["simulated"] is True and report.headers[SIMULATED_HEADER] == "true"
        csv = await srv.http.get("/v1/chargeback/report", params={**PERIOD, "format": "csv"},
                                 headers=read)
        assert csv.headers[SIMULATED_HEADER] == "true"
        assert csv.text.splitlines()[0].startswith("team_id,model_tag,gpu_arch")  # columns unchanged
    with MetricsStore.open(db) as store:  # the mark is in the file, not in the server
        assert store.simulated is not None and marks.INGEST in store.simulated.sources


async def test_a_marked_store_takes_simulated_data_from_any_server(tmp_path: Path) -> None:
    db = tmp_path / "marked.duckdb"
    with MetricsStore.open(db) as store:
        store.mark_simulated(marks.CONSOLE_DEMO)
    async with store_app(db) as srv:  # no --simulate: the store already says what it is
        ingest = {**srv.auth("ingest", header="x-api-key"), **SIMULATED}
        taken = await srv.http.post("/v1/metrics/ingest", headers=ingest, json=samples("GPU-sim"))
        assert taken.status_code == 200, taken.text


def run_report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    report_cmd.add_arguments(parser)
    return report_cmd.run(parser.parse_args(argv))


def test_the_sample_data_marks_its_store_and_gpufleet_report_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "demo.duckdb"
    with MetricsStore.open(db) as store:
        assert store.simulated is None
        assert load_sample_month(store, "default", fleet=tiny_fleet(), end=TODAY) > 0
        assert store.simulated is not None and store.simulated.sources == (marks.SAMPLE_DATA,)
    month = ["--from", TODAY.replace(day=1).isoformat(), "--to", TODAY.isoformat(), "--db", str(db)]
    assert run_report(month) == 0
    table = capsys.readouterr()[0].splitlines()
    assert table[1] == report_cmd.SIMULATED_NOTE and "TOTAL" in table[-1]
    assert run_report([*month, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr()[0])["simulated"] is True
    assert run_report([*month, "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("team_id,") and "SIMULATED" not in out  # the columns stay the API's
    assert err == f"gpufleet report: {report_cmd.SIMULATED_NOTE}\n"


def test_a_real_store_report_has_no_simulated_line(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "real.duckdb"
    with MetricsStore.open(db) as store:
        store.writer.submit_sync("default", [{**s, "timestamp": datetime.fromisoformat(s["timestamp"])}
                                             for s in samples()], NOW)
    assert run_report(["--from", PERIOD["from"], "--to", PERIOD["to"], "--db", str(db)]) == 0
    assert "SIMULATED" not in capsys.readouterr()[0]
    assert run_report(["--from", PERIOD["from"], "--to", PERIOD["to"], "--db", str(db),
                       "--format", "csv"]) == 0
    assert capsys.readouterr()[1] == ""


def _as_an_older_store(db: Path) -> None:
    """Take the store back to before the mark existed (schema without store_info)."""
    import duckdb

    con = duckdb.connect(str(db))
    version = con.execute("SELECT max(version) FROM schema_version").fetchone()[0]
    con.execute("DROP TABLE store_info")
    con.execute("DELETE FROM schema_version WHERE version >= ?", [_mark_version(con, version)])
    con.close()


def _mark_version(con: Any, latest: int) -> int:
    from gpufleet.server.store.schema import MIGRATIONS

    return next(n for n in range(1, latest + 1) if any("store_info" in s for s in MIGRATIONS[n - 1]))


def test_a_store_an_older_demo_wrote_into_is_marked_when_opened(tmp_path: Path) -> None:
    demo, real = tmp_path / "old-default.duckdb", tmp_path / "old-real.duckdb"
    uuid = sample_fleet_gpu_uuids()[3]
    for db, gpu in ((demo, uuid), (real, "GPU-real-0")):
        with MetricsStore.open(db) as store:
            store.writer.submit_sync("default", [
                {**s, "timestamp": datetime.fromisoformat(s["timestamp"])} for s in samples(gpu)], NOW)
        _as_an_older_store(db)
    with MetricsStore.open(demo) as store:
        assert store.simulated is not None and store.simulated.sources == (marks.OLDER_DEMO,)
        assert store.chargeback("default", date.fromisoformat(PERIOD["from"]), TODAY,
                                api_settings().pricing).simulated
    with MetricsStore.open(real) as store:
        assert store.simulated is None


def run_demo(argv: list[str]) -> int:
    from gpufleet.server.commands import demo as demo_cmd

    parser = argparse.ArgumentParser()
    demo_cmd.add_arguments(parser)
    return demo_cmd.run(parser.parse_args(argv))


def test_demo_reset_deletes_the_demo_store_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gpufleet.server.config import Settings

    demo = Settings().server.resolved_db_path(simulated=True)
    real = Settings().server.resolved_db_path()
    with MetricsStore.open(demo) as store:
        load_sample_month(store, "default", fleet=tiny_fleet(), end=TODAY)
    MetricsStore.open(real).close()
    assert run_demo(["reset"]) == 0
    assert "deleted the demo's store" in capsys.readouterr()[0]
    assert not demo.exists() and real.exists()
    assert run_demo(["reset"]) == 0  # nothing left to reset: not an error
    # a store at the demo's place that holds no simulated data is not the demo's
    MetricsStore.open(demo).close()
    assert run_demo(["reset"]) == 1
    assert "not deleted" in capsys.readouterr()[1] and demo.exists()


def test_demo_reset_db_takes_the_sample_fleet_out_of_a_store(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "old-default.duckdb"
    with MetricsStore.open(db) as store:
        key = store.create_key("ops", ["read"], "default").key
        load_sample_month(store, "default", fleet=tiny_fleet(), end=TODAY)
        store.writer.submit_sync("default", [{**s, "timestamp": datetime.fromisoformat(s["timestamp"])}
                                             for s in samples()], NOW)
        before = store.sample_count()
    assert run_demo(["reset", "--db", str(db)]) == 0
    assert "removed" in capsys.readouterr()[0]
    with MetricsStore.open(db) as store:
        assert store.simulated is None
        assert store.sample_count() == 5 < before  # the real GPU's samples stay
        assert store.authenticate(key) is not None  # and so do the keys
        report = store.chargeback("default", date.fromisoformat(PERIOD["from"]), TODAY,
                                  api_settings().pricing)
        assert not report.simulated and [t.team_id for t in report.teams] == ["ml"]
        assert store.list_hosts("default", NOW, 300) == []


def test_serve_simulate_without_db_uses_the_simulated_store(tmp_path: Path) -> None:
    import re
    import signal
    import subprocess
    import sys

    from gpufleet.server.config import Settings

    proc = subprocess.Popen([sys.executable, "-m", "gpufleet.server.cli", "serve", "--simulate",
                             "--port", "0", "--no-sampler"], stderr=subprocess.PIPE, text=True,
                            stdout=subprocess.DEVNULL)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if match := re.search(r"gpufleet serving \S+ \(store (.+)\)", line):
                break
        else:
            raise AssertionError("serve did not start")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert Path(match.group(1)) == Settings().server.resolved_db_path(simulated=True)
    assert not Settings().server.resolved_db_path().exists()  # the real store is never made


async def test_the_openapi_document_describes_the_simulated_header(tmp_path: Path) -> None:
    async with store_app(tmp_path / "doc.duckdb") as srv:
        doc = (await srv.http.get("/v1/openapi.json")).json()
    for path in ("/v1/metrics/ingest", "/v1/agent/heartbeat"):
        post = doc["paths"][path]["post"]
        assert "409" in post["responses"]
        assert {p["name"] for p in post["parameters"] if p["in"] == "header"} == {SIMULATED_HEADER}
    report = doc["paths"]["/v1/chargeback/report"]["get"]["responses"]["200"]
    assert SIMULATED_HEADER in report["headers"]
    assert "simulated" in doc["components"]["schemas"]["ChargebackReport"]["properties"]

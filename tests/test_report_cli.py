"""``gpufleet report`` on a store a running ``gpufleet serve`` holds, and its flag errors."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from gpufleet.server.admin import AdminChannel
from gpufleet.server.admin_client import AdminReports
from gpufleet.server.commands import report as report_cmd
from gpufleet.server.config import Limits, Pricing
from gpufleet.server.store import MetricsStore
from tests.serve_process import start_serve

DAY = "2026-03-10"


def run_report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    report_cmd.add_arguments(parser)
    return report_cmd.run(parser.parse_args(argv))


def _fill(db: Path) -> None:
    t0 = datetime(2026, 3, 10, tzinfo=UTC)
    rows = [{"timestamp": t0 + timedelta(minutes=m), "gpu_index": 0, "gpu_uuid": "G",
             "power_draw_w": 100, "utilization_gpu_pct": 50, "utilization_memory_pct": 1,
             "temperature_c": 50, "memory_used_mb": 1, "gpu_name": "NVIDIA H100 80GB HBM3",
             "team_id": "ml"} for m in range(120)]
    with MetricsStore.open(db) as store:
        store.writer.submit_sync("default", rows, t0)


def test_report_goes_through_the_server_holding_the_store(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "held.duckdb"
    _fill(db)
    server = start_serve(db, "--no-sampler")
    try:
        assert run_report(["--from", DAY, "--to", DAY, "--db", str(db), "--format", "json"]) == 0
        out, err = capsys.readouterr()
        report = json.loads(out)
        assert report["summary"]["total_gpu_hours"] == 2.0
        assert report["summary"]["total_cost_usd"] == 7.0  # the server's pricing: H100 $3.50/h
        assert [t["team_id"] for t in report["teams"]] == ["ml"]
        assert err == ""
        assert run_report(["--from", DAY, "--to", DAY, "--db", str(db), "--format", "csv"]) == 0
        assert capsys.readouterr()[0].splitlines()[1].startswith("ml,untagged,H100,2.00,3.50,7.00")
        assert run_report(["--from", DAY, "--to", DAY, "--db", str(db)]) == 0
        assert "TOTAL" in capsys.readouterr()[0]
    finally:
        server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit() == 0


def test_a_holder_without_an_admin_channel_gets_a_clear_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "plain.duckdb"
    _fill(db)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); "
         "print('ready', flush=True); sys.stdin.read()", str(db)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        assert run_report(["--from", DAY, "--to", DAY, "--db", str(db)]) == 1
        err = capsys.readouterr()[1]
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
    assert len(err.strip().splitlines()) == 1
    assert f"in use by process {holder.pid} (python" in err  # named as what it is: not a serve
    assert "gpufleet report --server URL --key-file FILE" in err
    assert "Conflicting lock" not in err and "IO Error" not in err  # no raw DuckDB text


@pytest.mark.parametrize(("flags", "message"), [
    (["--from", "2026-01-xx", "--to", "2026-01-31"],
     "gpufleet report: --from: expected a date like 2026-01-31, got '2026-01-xx'"),
    (["--from", "2026-01-01", "--to", "20260131"],
     "gpufleet report: --to: expected a date like 2026-01-31, got '20260131'"),
    (["--from", "2026-02-01", "--to", "2026-01-31"],
     "gpufleet report: --from 2026-02-01 is after --to 2026-01-31"),
    (["--from", "2025-01-01", "--to", "2026-01-31"],
     "gpufleet report: --from 2025-01-01 to --to 2026-01-31: a report spans at most 366 days"),
])
def test_bad_dates_are_named_by_their_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           flags: list[str], message: str) -> None:
    assert run_report([*flags, "--db", str(tmp_path / "none.duckdb")]) == 2
    err = capsys.readouterr()[1]
    assert err == message + "\n"
    assert "fromisoformat" not in err


async def test_the_admin_report_route_checks_like_the_http_api(tmp_path: Path) -> None:
    import asyncio

    db = tmp_path / "a.duckdb"
    _fill(db)
    cheap = Pricing(gpu_rates_usd={"H100": 1.0})
    with MetricsStore.open(db) as store:
        channel = AdminChannel(store, db, Limits(), pricing=cheap)
        await channel.start()
        try:
            def use() -> None:
                with AdminReports(db) as reports:
                    report = reports.chargeback("default", date(2026, 3, 10), date(2026, 3, 10))
                    assert report.summary.total_cost_usd == 2.0  # the channel's pricing
                    assert reports.chargeback("other", date(2026, 3, 10), date(2026, 3, 10)).teams == []
                    with pytest.raises(ValueError, match="from must not be after to"):
                        reports.chargeback("default", date(2026, 3, 11), date(2026, 3, 10))

            await asyncio.to_thread(use)
        finally:
            await channel.stop()


def test_the_table_says_how_much_of_each_team_was_shared(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "shared.duckdb"
    t0 = datetime(2026, 3, 10, tzinfo=UTC)
    rows = [{"timestamp": t0 + timedelta(minutes=m), "gpu_index": 0, "gpu_uuid": "G", "power_draw_w": 100,
             "utilization_gpu_pct": 50, "utilization_memory_pct": 1, "temperature_c": 50, "memory_used_mb": 1,
             "gpu_name": "NVIDIA H100 80GB HBM3", "team_id": team, "gpu_fraction": fraction}
            for m in range(120) for team, fraction in (("ml", 0.75), ("web", 0.25))]
    with MetricsStore.open(db) as store:
        store.writer.submit_sync("default", rows, t0)
    assert run_report(["--from", DAY, "--to", DAY, "--db", str(db)]) == 0
    lines = capsys.readouterr()[0].splitlines()
    assert lines[1].split() == ["TEAM", "GPU-HOURS", "COST", "USD", "ENERGY", "KWH", "IDLE", "H", "SHARED", "H"]
    assert [line.split()[:2] + line.split()[-1:] for line in lines[2:]] == [
        ["ml", "1.50", "1.50"], ["web", "0.50", "0.50"], ["TOTAL", "2.00", "2.00"]]


HOSTILE_TEAM = "\x1b]0;owned\x07\x1b[2J\x1b[31mops"


async def _ingest_hostile(db: Path) -> None:
    """What any holder of an ingest key can send: the API takes any text but NUL and surrogates."""
    from tests.api_server import store_app

    t0 = datetime(2026, 3, 10, tzinfo=UTC)
    body = [{"timestamp": (t0 + timedelta(minutes=m)).strftime("%Y-%m-%dT%H:%M:%SZ"),
             "gpu_index": 0, "gpu_uuid": "G", "power_draw_w": 100, "utilization_gpu_pct": 50,
             "utilization_memory_pct": 1, "temperature_c": 50, "memory_used_mb": 1,
             "team_id": HOSTILE_TEAM, "model_tag": "m\r\nforged,row"} for m in range(3)]
    async with store_app(db) as srv:
        response = await srv.http.post("/v1/metrics/ingest", json=body, headers=srv.auth("ingest"))
        assert response.status_code == 200, response.text


async def test_team_names_an_agent_sent_never_reach_the_terminal_raw(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio
    import os
    import pty

    db = tmp_path / "hostile.duckdb"
    await _ingest_hostile(db)
    assert run_report(["--from", DAY, "--to", DAY, "--db", str(db)]) == 0
    table = capsys.readouterr()[0]
    assert "\x1b" not in table and "\x07" not in table
    assert r"\x1b]0;owned\x07\x1b[2J\x1b[31mops" in table.splitlines()[2]
    # CSV is the stored data, byte for byte, into a file or a pipe...
    assert run_report(["--from", DAY, "--to", DAY, "--db", str(db), "--format", "csv"]) == 0
    assert HOSTILE_TEAM in capsys.readouterr()[0]

    # ...and escaped on a terminal
    def on_a_terminal() -> bytes:
        leader, follower = pty.openpty()
        child = subprocess.Popen([sys.executable, "-m", "gpufleet.server.cli", "report", "--from",
                                  DAY, "--to", DAY, "--db", str(db), "--format", "csv"],
                                 stdout=follower, stderr=follower, stdin=subprocess.DEVNULL)
        os.close(follower)
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 1 << 16)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        os.close(leader)
        assert child.wait(timeout=60) == 0
        return seen

    shown = await asyncio.to_thread(on_a_terminal)
    assert b"\x1b" not in shown and b"\x07" not in shown, shown
    assert rb"\x1b]0;owned\x07\x1b[2J\x1b[31mops" in shown

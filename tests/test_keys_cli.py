"""``gpufleet keys`` and ``gpufleet report --db`` against a real store file."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gpufleet.server.commands import keys as keys_cmd
from gpufleet.server.commands import report as report_cmd
from gpufleet.server.store import MetricsStore


def run(module, argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


def test_create_list_rotate_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "k.duckdb")
    assert run(keys_cmd, ["--db", db, "create", "--scope", "ingest,read", "--name", "ci", "--account", "acme"]) == 0
    out, err = capsys.readouterr()
    secret = out.strip()
    assert secret.startswith("gf_") and "will not be shown again" in err
    assert run(keys_cmd, ["--db", db, "list"]) == 0
    listing, _ = capsys.readouterr()
    assert "ci" in listing and "ingest,read" in listing and secret not in listing
    assert run(keys_cmd, ["--db", db, "rotate", "ci"]) == 0
    rotated = capsys.readouterr()[0].strip()
    assert run(keys_cmd, ["--db", db, "revoke", "ci", "--json"]) == 0
    revoked = json.loads(capsys.readouterr()[0])
    assert revoked["revoked_at"] is not None
    with MetricsStore.open(Path(db)) as store:
        assert store.authenticate(secret) is None and store.authenticate(rotated) is None
    assert run(keys_cmd, ["--db", db, "create", "--scope", "admin", "--name", "x"]) == 1
    assert "unknown scope" in capsys.readouterr()[1]


def test_a_store_held_by_another_process_is_reported_clearly(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "held.duckdb"
    MetricsStore.open(db).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('ready', flush=True); "
         "sys.stdin.read()", str(db)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert run(keys_cmd, ["--db", str(db), "list"]) == 3
        err = capsys.readouterr()[1]
        assert f"in use by process {holder.pid} (python" in err  # named as what it is: not a serve
        assert "no admin channel" in err  # a plain DuckDB holder: nothing to send the command to
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)


def test_report_from_a_local_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "r.duckdb"
    t0 = datetime(2026, 3, 10, tzinfo=UTC)
    with MetricsStore.open(db) as store:
        rows = [{"timestamp": t0 + timedelta(minutes=m), "gpu_index": 0, "gpu_uuid": "G", "power_draw_w": 100,
                 "utilization_gpu_pct": 50, "utilization_memory_pct": 1, "temperature_c": 50, "memory_used_mb": 1,
                 "gpu_name": "NVIDIA H100 80GB HBM3", "team_id": "ml"} for m in range(120)]
        store.writer.submit_sync("default", rows, t0)
    assert run(report_cmd, ["--from", "2026-03-10", "--to", "2026-03-10", "--db", str(db), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr()[0])
    assert report["period"] == {"from": "2026-03-10", "to": "2026-03-10"}
    assert report["summary"]["total_gpu_hours"] == 2.0 and report["summary"]["total_cost_usd"] == 7.0
    out = tmp_path / "r.csv"
    assert run(report_cmd, ["--from", "2026-03-10", "--to", "2026-03-10", "--db", str(db), "--format", "csv",
                            "--output", str(out)]) == 0
    assert out.read_text().splitlines()[1].startswith("ml,untagged,H100,2.00,3.50,7.00")
    assert run(report_cmd, ["--from", "2026-03-10", "--to", "2026-03-10", "--db", str(db)]) == 0
    assert "TOTAL" in capsys.readouterr()[0]


def test_a_rotated_key_keeps_its_id_and_lists_once_with_its_history(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "k.duckdb")
    assert run(keys_cmd, ["--db", db, "create", "--scope", "ingest", "--name", "agents", "--json"]) == 0
    created = json.loads(capsys.readouterr()[0])
    key_id, first_prefix = created["info"]["id"], created["info"]["prefix"]
    # a script that names the key by its id keeps working across rotations
    for _ in range(2):
        assert run(keys_cmd, ["--db", db, "rotate", key_id, "--json"]) == 0
        rotated = json.loads(capsys.readouterr()[0])
        assert rotated["info"]["id"] == key_id and rotated["info"]["name"] == "agents"
    assert run(keys_cmd, ["--db", db, "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr()[0])
    assert [k["id"] for k in listed] == [key_id]  # one key per name, not one row per secret
    history = listed[0]["rotations"]
    assert len(history) == 2 and history[0]["old_prefix"] == first_prefix
    assert listed[0]["prefix"] == rotated["info"]["prefix"] != first_prefix
    assert run(keys_cmd, ["--db", db, "list"]) == 0
    table = capsys.readouterr()[0]
    assert "ROTATED" in table and "2x, last " in table and table.count("agents") == 1
    with MetricsStore.open(Path(db)) as store:
        assert store.authenticate(rotated["key"]) is not None
        assert store.authenticate(created["key"]) is None


def test_revoking_a_revoked_key_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "k.duckdb")
    assert run(keys_cmd, ["--db", db, "create", "--scope", "read", "--name", "old"]) == 0
    assert run(keys_cmd, ["--db", db, "revoke", "old"]) == 0
    capsys.readouterr()
    assert run(keys_cmd, ["--db", db, "revoke", "old"]) == 1
    err = capsys.readouterr()[1]
    assert "was already revoked at" in err and "nothing changed" in err and "'old'" in err


@pytest.mark.parametrize("name", ["ops\x00", "ops\udcff", "line\nbreak", "\t", "x" * 129])
def test_key_names_are_printable_text_of_bounded_length(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    db = str(tmp_path / "k.duckdb")
    assert run(keys_cmd, ["--db", db, "create", "--scope", "read", "--name", name]) == 1
    assert "printable characters" in capsys.readouterr()[1] or name == "\t"
    assert run(keys_cmd, ["--db", db, "revoke", name]) == 1  # a lookup by such a name: not found
    assert "no key" in capsys.readouterr()[1]
    with MetricsStore.open(Path(db)) as store:
        assert store.list_keys() == []

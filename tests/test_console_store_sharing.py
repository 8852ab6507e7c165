"""The store is shared, not fought over: keys and report while a console runs, the console finds serve."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gpufleet.console.embedded import (
    KEY_FILE,
    EmbeddedServerError,
    start_demo_or_connect,
)
from gpufleet.server.admin import admin_dir
from gpufleet.server.client import GpuFleetClient
from gpufleet.server.config import Settings
from gpufleet.server.store import MetricsStore
from tests.serve_process import start_serve


def settings_for(db: Path, local_url: str) -> Settings:
    return Settings().with_overrides({"server.db_path": str(db), "console.local_server_url": local_url,
                                      "sampler.enabled": False})


def gpufleet(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpufleet.server.cli", *argv],
                          capture_output=True, text=True, timeout=60)


def test_keys_and_report_work_while_a_console_holds_the_store(tmp_path: Path, refused_url: str) -> None:
    db = tmp_path / "real.duckdb"
    console = start_demo_or_connect(settings_for(db, refused_url), directory=tmp_path / "data",
                                    gpu_present=True)
    try:
        assert console.origin == "embedded" and (admin_dir(db) / "sock").exists()
        created = gpufleet("keys", "create", "--name", "ops", "--scope", "ingest,read", "--db", str(db))
        assert created.returncode == 0, created.stderr
        secret = created.stdout.strip()
        with GpuFleetClient(console.local_url, api_key=secret) as client:  # usable at once
            assert client.hosts().hosts == []
        listing = gpufleet("keys", "list", "--json", "--db", str(db))
        assert listing.returncode == 0, listing.stderr
        assert {k["name"] for k in json.loads(listing.stdout)} >= {"ops"}
        report = gpufleet("report", "--from", "2026-03-01", "--to", "2026-03-31", "--db", str(db),
                          "--format", "json")
        assert report.returncode == 0, report.stderr
        assert json.loads(report.stdout)["simulated"] is False
    finally:
        console.stop()
    assert not admin_dir(db).exists()  # the socket and its folder go with the console
    with MetricsStore.open(db) as store:
        assert "ops" in {k.name for k in store.list_keys()}


@pytest.mark.parametrize("gpu_present", [True, False], ids=["gpu", "demo"])
def test_the_console_finds_serve_on_any_port_through_the_admin_socket(
        tmp_path: Path, refused_url: str, gpu_present: bool) -> None:
    """Without a GPU too: a collector box running serve shows its real chargeback, not the demo's."""
    db = tmp_path / "served.duckdb"
    data = tmp_path / "data"
    server = start_serve(db, "--no-sampler")  # on a port of its own choosing, not the default
    try:
        console = start_demo_or_connect(settings_for(db, refused_url), directory=data,
                                        gpu_present=gpu_present, demo_nodes=0)
        try:
            assert console.origin == "shared" and console.local_url == server.url
            with GpuFleetClient(console.local_url, api_key=console.local_key) as client:
                assert client.hosts().hosts == []  # a key that server accepts, made through the socket
            assert (data / KEY_FILE).read_text().strip() == console.local_key
        finally:
            console.stop()
        again = start_demo_or_connect(settings_for(db, refused_url), directory=data,
                                      gpu_present=gpu_present, demo_nodes=0)
        again.stop()
        assert again.local_key == console.local_key  # the key file's key is reused, not a new one
        listing = gpufleet("keys", "list", "--json", "--db", str(db))
        assert [k["name"].startswith("console-local-") for k in json.loads(listing.stdout)] == [True]
        assert server.proc.poll() is None  # the console's stop never stops someone else's server
        assert not Settings().server.resolved_db_path(simulated=True).exists()  # no demo store made
    finally:
        server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit() == 0


def test_a_holder_that_is_not_gpufleet_is_named_at_once(tmp_path: Path, refused_url: str) -> None:
    db = tmp_path / "held.duckdb"
    MetricsStore.open(db).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); "
         "print('ready', flush=True); sys.stdin.read()", str(db)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(EmbeddedServerError) as caught:
            start_demo_or_connect(settings_for(db, refused_url), directory=tmp_path / "data",
                                  gpu_present=True)
        message = str(caught.value)
        served = gpufleet("serve", "--port", "0", "--db", str(db), "--no-sampler")
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
    assert f"in use by process {holder.pid} (python" in message and "\n" not in message
    assert "Conflicting lock" not in message and "IO Error" not in message
    assert served.returncode == 1
    (line,) = served.stderr.strip().splitlines()
    assert f"in use by process {holder.pid} (python" in line and "--db PATH" in line
    assert "Conflicting lock" not in line and "IO Error" not in line


def test_a_gpufleet_export_holding_the_store_is_named_as_one(tmp_path: Path) -> None:
    # `gpufleet export --db` holds the store for its run; it was named "the gpufleet console",
    # so a console starting meanwhile said to quit it instead of waiting for it to finish.
    from gpufleet.server.store.holder import describe_holder, holder_command

    script = Path(sys.executable).parent / "gpufleet"
    holder = subprocess.Popen(
        [str(script), "-c", "import sys; print('ready', flush=True); sys.stdin.read()",
         "export", "--output", str(tmp_path / "lake")],
        executable=sys.executable, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        command, words = holder_command(holder.pid), describe_holder(holder.pid)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
    assert (command, words) == ("export", f"gpufleet export (pid {holder.pid})")

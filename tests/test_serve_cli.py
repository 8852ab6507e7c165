"""``gpufleet serve`` and ``gpufleet simulate`` as real processes: start, serve, signals, exit."""

from __future__ import annotations

import logging
import os
import queue
import re
import signal
import stat
import subprocess
import sys
import threading
import time
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpufleet.server.store import MetricsStore
from tests.serve_process import ServeProcess, _pump, start_serve


def _create_key(db: Path, scopes: list[str]) -> str:
    with MetricsStore.open(db) as store:
        return store.create_key("cli-test", scopes, "default").key


def _sample(i: int) -> dict[str, object]:
    ts = datetime.now(UTC) - timedelta(hours=2) + timedelta(seconds=i)
    return {"timestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ"), "gpu_index": 0,
            "gpu_uuid": "GPU-cli", "power_draw_w": 100, "utilization_gpu_pct": 10,
            "utilization_memory_pct": 10, "temperature_c": 40, "memory_used_mb": 10}


def test_first_start_says_how_to_create_a_key_and_sigterm_exits_0(tmp_path: Path) -> None:
    server = start_serve(tmp_path / "db.duckdb", "--no-sampler")
    try:
        health = httpx.get(f"{server.url}/v1/metrics/ingest", timeout=10)
        assert health.json()["status"] == "ok"
    finally:
        server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert "store closed" in server.log
    # the hint is a command that works as printed
    hint = re.search(r"Create one with: gpufleet (keys create .*)$", server.log, re.MULTILINE)
    assert hint, server.log
    argv = hint.group(1).split()
    argv[argv.index("NAME")] = "first"
    created = subprocess.run([sys.executable, "-m", "gpufleet.server.cli", *argv], capture_output=True,
                             text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    with MetricsStore.open(tmp_path / "db.duckdb") as store:
        secret = created.stdout.strip()
        assert store.authenticate(secret) is not None
        assert [k.name for k in store.list_keys()] == ["first"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_acknowledged_samples_survive_a_graceful_stop(tmp_path: Path, signum: int) -> None:
    db = tmp_path / "db.duckdb"
    key = _create_key(db, ["ingest", "read"])
    server = start_serve(db, "--no-sampler")
    try:
        response = httpx.post(f"{server.url}/v1/metrics/ingest",
                              json=[_sample(i) for i in range(25)],
                              headers={"X-API-Key": key}, timeout=10)
        assert response.json()["inserted"] == 25
    finally:
        server.proc.send_signal(signum)
    assert server.wait_exit() == 0
    assert "gpufleet keys create" not in server.log
    with MetricsStore.open(db) as store:
        assert store.sample_count("default") == 25


def test_in_process_sampler_fills_the_store_and_hosts(tmp_path: Path) -> None:
    db = tmp_path / "db.duckdb"
    key = _create_key(db, ["read"])
    server = start_serve(db)
    try:
        deadline = time.monotonic() + 20
        hosts: list[dict[str, object]] = []
        while time.monotonic() < deadline and not hosts:
            hosts = httpx.get(f"{server.url}/v1/agent/hosts", headers={"X-API-Key": key},
                              timeout=10).json()["hosts"]
            if not hosts:
                time.sleep(0.1)
        assert hosts, "the local host never appeared"
        assert hosts[0]["gpu_count"] > 0
        assert hosts[0]["status"] == "alive"
    finally:
        server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    with MetricsStore.open(db) as store:
        assert store.sample_count("default") >= hosts[0]["gpu_count"]  # type: ignore[operator]


def test_a_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "gpufleet.server.cli", "serve", "--port", str(port), "--db",
             str(tmp_path / "db.duckdb"), "--simulate", "--no-sampler"],
            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "db.duckdb").exists()  # checked before the store was opened


def _serve_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    from gpufleet.server.cli import main

    code = main(["serve", "--db", str(tmp_path / "db.duckdb"), "--simulate", "--no-sampler",
                 *flags])
    err = capsys.readouterr().err
    assert not (tmp_path / "db.duckdb").exists(), "the store was opened by a server that cannot start"
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("gpufleet serve: ")
    return code, err


def test_missing_tls_files_are_one_clear_line_before_the_store_opens(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "key.pem"
    key.write_text("not used")
    code, err = _serve_refused(tmp_path, capsys, "--tls-cert", str(tmp_path / "nope.pem"),
                               "--tls-key", str(key))
    assert code == 2
    assert f"--tls-cert {tmp_path / 'nope.pem'}: No such file or directory" in err


def test_unreadable_or_unusable_tls_files_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    key.write_text("garbage")
    code, err = _serve_refused(tmp_path, capsys, "--tls-cert", str(cert), "--tls-key", str(key))
    assert code == 2
    assert "not a usable PEM certificate and matching private key" in err
    if os.geteuid() != 0:  # root reads any file
        key.chmod(0)
        code, err = _serve_refused(tmp_path, capsys, "--tls-cert", str(cert), "--tls-key", str(key))
        assert code == 2
        assert f"--tls-key {key}: Permission denied" in err


def test_tls_needs_both_files_and_the_port_must_be_in_range(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    code, err = _serve_refused(tmp_path, capsys, "--tls-cert", str(cert))
    assert code == 2 and "TLS needs both a certificate" in err
    code, err = _serve_refused(tmp_path, capsys, "--port", "70000")
    assert code == 2 and "--port 70000: must be between 0 and 65535" in err


def test_simulate_serves_n_nodes_with_a_private_token(tmp_path: Path) -> None:
    token_file = tmp_path / "sim.token"
    nodes_file = tmp_path / "nodes.toml"
    # Relative paths, as the README's outage recipe gives them: the nodes file must
    # still name the token by its absolute path, for a console started elsewhere.
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpufleet.server.cli", "simulate", "--nodes", "3", "--gpus-per-node", "2",
         "--token-file", "sim.token", "--nodes-file", "nodes.toml"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        header = [proc.stdout.readline() for _ in range(3)]
        nodes = [proc.stdout.readline().split() for _ in range(3)]
        assert header[0] == f"token_file {token_file}\n"
        assert header[1] == f"nodes_file {nodes_file}\n"
        assert f"$(cat {token_file})" in header[2] and nodes[0][1] in header[2]
        token = token_file.read_text().strip()
        assert token.startswith("gpf_sim_") and len(token) > 40
        assert all(token not in line for line in header)  # the secret is never printed
        assert token_file.stat().st_mode & 0o777 == 0o600
        names = [name for name, _ in nodes]
        assert len(set(names)) == 3
        for name, url in nodes:
            body = httpx.get(f"{url}/v1/gpu/status", timeout=10,
                             headers={"Authorization": f"Bearer {token}"}).json()
            assert body["node"]["hostname"] == name
            assert body["node"]["simulated"] is True
            assert httpx.get(f"{url}/v1/gpu/status", timeout=10).status_code == 401
            assert httpx.get(f"{url}/v1/metrics/ingest", timeout=10).status_code == 404
        snippet = tomllib.loads(nodes_file.read_text())["nodes"]
        assert [(n["name"], n["url"]) for n in snippet] == [(name, url) for name, url in nodes]
        assert {n["token_file"] for n in snippet} == {str(token_file)}
    finally:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


# --- private files; a simulated node is served but only sampled when asked -------------

REPO = Path(__file__).resolve().parent.parent
FAKE_NVML_PATH = str(REPO / "tests" / "fakes")  # NVML loads and finds no GPU


def _serve(db: Path, *extra: str, pythonpath: str | None = None) -> ServeProcess:
    """``gpufleet serve --port 0 --db DB ...`` under umask 022, started as a user would."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.Popen([sys.executable, "-m", "gpufleet.server.cli", "serve", "--port", "0",
                             "--db", str(db), *extra], cwd=REPO, env=env, umask=0o022,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:  # ends when the server exits; a test timeout bounds the rest
        lines.append(line)
        match = re.search(r"gpufleet serving (http\S+)", line)
        if match:
            sink: queue.Queue[str | None] = queue.Queue()
            threading.Thread(target=_pump, args=(proc.stderr, sink), daemon=True).start()
            return ServeProcess(proc, match.group(1), lines, sink)
    proc.wait()
    raise AssertionError("gpufleet serve did not start:\n" + "".join(lines))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_store_its_wal_and_its_folders_are_private(tmp_path: Path) -> None:
    db = tmp_path / "data" / "gpufleet" / "db.duckdb"
    server = _serve(db, "--simulate")
    try:
        # The sampler's first tick writes through DuckDB (the .wal appears on its first commit).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "samples" not in _wrote(db):
            time.sleep(0.05)
        for path in [db.parent, *db.parent.iterdir()]:
            assert _mode(path) & 0o077 == 0, f"{path} is {_mode(path):o}"
    finally:
        server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert _mode(tmp_path / "data") == 0o700 and _mode(db.parent) == 0o700
    assert _mode(db) == 0o600
    assert all(_mode(p) & 0o077 == 0 for p in db.parent.iterdir())


def _wrote(db: Path) -> str:
    """``samples`` once the running server's store has a .wal or has grown past its header."""
    wal = db.with_name(db.name + ".wal")
    return "samples" if wal.exists() or (db.exists() and db.stat().st_size > 0) else ""


def test_without_a_gpu_serve_warns_and_stores_no_simulated_samples(tmp_path: Path) -> None:
    db = tmp_path / "db.duckdb"
    key = _create_key(db, ["operator"])
    server = _serve(db, pythonpath=FAKE_NVML_PATH)
    try:
        status = httpx.get(f"{server.url}/v1/gpu/status", headers={"X-API-Key": key}, timeout=10)
        assert status.status_code == 200 and status.json()["node"]["simulated"] is True
        hosts = httpx.get(f"{server.url}/v1/agent/hosts", headers={"X-API-Key": key}, timeout=10)
        assert hosts.json()["hosts"] == []  # no in-process heartbeat either
    finally:
        server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    (warning,) = [line for line in server.lines if "SIMULATED" in line]
    assert " WARNING " in warning and "NOT stored" in warning and "--simulate" in warning
    with MetricsStore.open(db) as store:
        assert store.sample_count() == 0


def test_with_simulate_the_simulated_node_is_sampled_without_a_warning(tmp_path: Path) -> None:
    db = tmp_path / "db.duckdb"
    key = _create_key(db, ["read"])
    server = _serve(db, "--simulate", pythonpath=FAKE_NVML_PATH)
    try:
        deadline = time.monotonic() + 20
        hosts: list[dict[str, object]] = []
        while time.monotonic() < deadline and not hosts:
            hosts = httpx.get(f"{server.url}/v1/agent/hosts", headers={"X-API-Key": key},
                              timeout=10).json()["hosts"]
            if not hosts:
                time.sleep(0.1)
        assert hosts, "the simulated node was never sampled"
    finally:
        server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert "SIMULATED" not in server.log and " WARNING " not in server.log.replace(
        "No API keys yet", "")
    with MetricsStore.open(db) as store:
        assert store.sample_count() > 0


def test_sampling_settings_keep_invented_samples_out_unless_asked(
        fake_nvml: Any, caplog: pytest.LogCaptureFixture) -> None:
    from gpufleet.server.commands.serve import sampling_settings
    from gpufleet.server.config import Settings
    from gpufleet.server.gpu.nvml import NvmlBackend
    from gpufleet.server.gpu.simulated import SimulatedBackend
    from tests.fakes.pynvml import FakeGpu

    simulated = SimulatedBackend()
    default = Settings()
    with caplog.at_level(logging.WARNING, logger="gpufleet.server"):
        assert sampling_settings(default, simulated).sampler.enabled is False
    assert "SIMULATED" in caplog.text and "NOT stored" in caplog.text
    caplog.clear()
    asked = default.with_overrides({"server.simulate": True})  # --simulate or the config
    assert sampling_settings(asked, simulated).sampler.enabled is True
    assert caplog.text == ""
    fake_nvml.configure([FakeGpu(name="NVIDIA A100-SXM4-80GB", uuid="GPU-a100-0")])
    real = NvmlBackend(nvml_module=fake_nvml)
    try:
        assert sampling_settings(default, real) is default
    finally:
        real.close()
    assert caplog.text == ""


def test_a_bad_runtime_in_the_config_stops_serve_before_the_store_opens(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[[runtimes]]\ntype = "ollama"\nname = "local-llm"\n')
    db = tmp_path / "never.duckdb"
    done = subprocess.run([sys.executable, "-m", "gpufleet.server.cli", "serve", "--config", str(config),
                           "--db", str(db), "--port", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"gpufleet serve: {config}: runtimes.0: an ollama runtime "
                                   "needs a url (e.g. http://127.0.0.1:11434)")
    assert not db.exists()


def _hold(url: str, count: int) -> list:  # type: ignore[type-arg]
    import socket

    host, port = url.removeprefix("http://").rsplit(":", 1)
    return [socket.create_connection((host, int(port)), timeout=10) for _ in range(count)]


def test_a_low_soft_open_file_limit_is_raised_so_every_allowed_connection_fits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # one test address holds them all: lift the per-address cap, this is about the file limit
    monkeypatch.setenv("GPUFLEET_LIMITS__MAX_CONNECTIONS_PER_ADDRESS", "1024")
    server = start_serve(tmp_path / "db.duckdb", "--no-sampler", open_files=(128, 4096))
    held = _hold(server.url, 200)  # more than 128 files would allow
    try:
        time.sleep(0.3)
        assert httpx.get(f"{server.url}/v1/metrics/ingest", timeout=10).status_code == 200
    finally:
        for sock in held:
            sock.close()
        server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert "Too many open files" not in server.log and "open-file limit" not in server.log


def test_a_low_hard_open_file_limit_lowers_the_connection_cap_so_past_it_is_a_503(tmp_path: Path) -> None:
    server = start_serve(tmp_path / "db.duckdb", "--no-sampler", open_files=(160, 160))
    held = _hold(server.url, 100)  # the cap is 160 - 64 spare files = 96
    try:
        held[-1].sendall(b"GET /v1/metrics/ingest HTTP/1.1\r\nHost: x\r\n\r\n")
        assert held[-1].recv(200).startswith(b"HTTP/1.1 503")
        held[0].sendall(b"GET /v1/metrics/ingest HTTP/1.1\r\nHost: x\r\n\r\n")
        assert held[0].recv(200).startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()
        server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert "open-file limit 160 leaves room for 96 connections, not limits.max_connections=1024" in server.log
    assert "Too many open files" not in server.log


def test_one_rate_limit_field_from_the_environment_keeps_the_others_default(tmp_path: Path) -> None:
    """``GPUFLEET_RATE_LIMITS__INGEST__REQUESTS=5`` alone: serve starts, ingest's bucket holds 5."""
    db = tmp_path / "db.duckdb"
    key = _create_key(db, ["ingest"])
    server = start_serve(db, "--no-sampler", env={"GPUFLEET_RATE_LIMITS__INGEST__REQUESTS": "5",
                                                  "XDG_CONFIG_HOME": str(tmp_path / "no-config")})
    try:
        response = httpx.post(f"{server.url}/v1/metrics/ingest", json=[_sample(0)],
                              headers={"X-API-Key": key}, timeout=10)
        assert response.status_code == 200, response.text
        assert response.headers["x-ratelimit-limit"] == "5"
        assert response.headers["x-ratelimit-remaining"] == "4"
    finally:
        server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit() == 0

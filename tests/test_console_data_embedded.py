"""The console's find-or-start of its local server, shared between consoles, and the demo fleet."""

from __future__ import annotations

import http.server
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gpufleet.console import embedded
from gpufleet.console.embedded import (
    DISCOVERY_FILE,
    KEY_FILE,
    SIMULATED_DISCOVERY_FILE,
    SIMULATED_KEY_FILE,
    discovery_path,
    server_answers,
    start_demo_or_connect,
)
from gpufleet.server.client import GpuFleetClient, Unauthorized
from gpufleet.server.config import Settings
from gpufleet.server.schemas import HostInfo


def console_settings(tmp_path: Path, local_url: str) -> Settings:
    return Settings().with_overrides({
        "server.db_path": str(tmp_path / "console.duckdb"),
        "server.simulated_db_path": str(tmp_path / "demo.duckdb"),
        "console.local_server_url": local_url,
        "sampler.enabled": False,
    })


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_console_starts_a_server_and_a_second_reuses_it(tmp_path: Path, refused_url: str) -> None:
    settings = console_settings(tmp_path, refused_url)
    data = tmp_path / "data"
    first = start_demo_or_connect(settings, directory=data, gpu_present=False, demo_nodes=2)
    try:
        assert first.origin == "embedded" and first.simulated
        assert first.sample_ready.wait(60), "the sample month loads behind the console's first frame"
        assert first.local_url.startswith("http://127.0.0.1:") and first.local_url != refused_url
        discovery = json.loads((data / SIMULATED_DISCOVERY_FILE).read_text())
        assert discovery["url"] == first.local_url and discovery["pid"] == os.getpid()
        assert discovery["store"] == str(tmp_path / "demo.duckdb") and discovery["simulated"]
        assert mode_of(data / SIMULATED_DISCOVERY_FILE) == 0o600
        assert mode_of(data / SIMULATED_KEY_FILE) == 0o600
        assert first.local_key not in (data / SIMULATED_DISCOVERY_FILE).read_text()  # only the key's path
        assert not (data / DISCOVERY_FILE).exists() and not (tmp_path / "console.duckdb").exists()
        with GpuFleetClient(first.local_url, api_key=first.local_key) as client:
            today = datetime.now(UTC).date()
            report = client.chargeback_report(today - timedelta(days=30), today)
            assert report.teams, "the sample month is loaded when the data is simulated"
            assert client.hosts().hosts is not None

        second = start_demo_or_connect(settings, directory=data, gpu_present=False, demo_nodes=0)
        assert second.origin == "shared"
        assert (second.local_url, second.local_key) == (first.local_url, first.local_key)
        second.stop()  # the second console quits: the first one's server carries on
        assert server_answers(first.local_url)
        assert discovery_path(data, simulated=True).exists()
    finally:
        first.stop()
    assert not discovery_path(data, simulated=True).exists()
    assert not server_answers(first.local_url)


def test_demo_fleet_nodes_answer_with_their_operator_token(tmp_path: Path, refused_url: str) -> None:
    connections = start_demo_or_connect(console_settings(tmp_path, refused_url),
                                        directory=tmp_path / "data", gpu_present=False, demo_nodes=2)
    try:
        assert len(connections.nodes) == 2
        assert len({node.url for node in connections.nodes}) == 2
        for node in connections.nodes:
            assert "***" in repr(node)  # the token never shows
            with GpuFleetClient(node.url, api_key=node.api_key) as client:
                status = client.get_gpu_status()
                assert status.node is not None and status.node.simulated
                assert status.node.hostname == node.name
            with GpuFleetClient(node.url, api_key="wrong") as client, pytest.raises(Unauthorized):
                client.get_gpu_status()
    finally:
        connections.stop()
    assert not any(server_answers(node.url) for node in connections.nodes)


def test_a_configured_server_that_answers_is_used_as_is(tmp_path: Path, refused_url: str) -> None:
    data = tmp_path / "data"
    owner = start_demo_or_connect(console_settings(tmp_path / "a", refused_url), directory=data,
                                  gpu_present=True)
    try:
        other = tmp_path / "other-data"
        configured = start_demo_or_connect(console_settings(tmp_path / "b", owner.local_url),
                                           directory=other, gpu_present=True)
        assert configured.origin == "configured" and configured.local_url == owner.local_url
        assert not configured.simulated and configured.nodes == []
        assert not discovery_path(other).exists()
        configured.stop()
        assert server_answers(owner.local_url)
    finally:
        owner.stop()


def test_a_discovery_file_of_a_dead_console_is_ignored(tmp_path: Path, refused_url: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    (data / DISCOVERY_FILE).write_text(json.dumps(
        {"url": refused_url, "pid": int(dead.stdout), "key_file": str(data / KEY_FILE)}))
    connections = start_demo_or_connect(console_settings(tmp_path, refused_url), directory=data,
                                        gpu_present=True)
    try:
        assert connections.origin == "embedded"
        assert json.loads((data / DISCOVERY_FILE).read_text())["url"] == connections.local_url
    finally:
        connections.stop()
    assert not discovery_path(data).exists()


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers the health check like a gpufleet server and records every request's headers."""

    def do_GET(self) -> None:
        self.server.seen.append({k.lower(): v for k, v in self.headers.items()})  # type: ignore[attr-defined]
        body = json.dumps({"status": "ok", "endpoint": "GPU Metrics Ingestion API",
                           "methods": ["POST"], "documentation": "x"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def squatter() -> Iterator[http.server.ThreadingHTTPServer]:
    """A listener on the default port's place that answers like a server and records headers."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def default_url_settings(tmp_path: Path, port: int) -> Settings:
    """No console.local_server_url: the default http://127.0.0.1:<server.port> applies."""
    return Settings().with_overrides({"server.db_path": str(tmp_path / "console.duckdb"),
                                      "server.port": port, "sampler.enabled": False})


def test_the_default_port_is_used_when_our_own_process_listens_there(
        tmp_path: Path, squatter: http.server.ThreadingHTTPServer, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("GPUFLEET_KEY", "gpf_sentinel_key_of_this_user")
    port = squatter.server_address[1]
    assert embedded.listener_is_ours(port)  # the real probe: this test process listens there
    connections = start_demo_or_connect(default_url_settings(tmp_path, port),
                                        directory=tmp_path / "data", gpu_present=True)
    try:
        assert connections.origin == "configured"
        assert connections.local_url == f"http://127.0.0.1:{port}"
        assert connections.local_key == "gpf_sentinel_key_of_this_user"
    finally:
        connections.stop()


def test_the_key_never_goes_to_another_users_listener_on_the_default_port(
        tmp_path: Path, squatter: http.server.ThreadingHTTPServer, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("GPUFLEET_KEY", "gpf_sentinel_key_of_this_user")
    port = squatter.server_address[1]
    probed: list[int] = []

    def another_users(checked_port: int) -> bool:  # this machine has one user: simulate a second
        probed.append(checked_port)
        return False

    monkeypatch.setattr(embedded, "listener_is_ours", another_users)
    connections = start_demo_or_connect(default_url_settings(tmp_path, port),
                                        directory=tmp_path / "data", gpu_present=True)
    try:
        assert probed == [port]
        assert connections.origin == "embedded"
        assert connections.local_url != f"http://127.0.0.1:{port}"
        with GpuFleetClient(connections.local_url, api_key=connections.local_key) as client:
            assert client.hosts().hosts is not None  # our own server serves the console
    finally:
        connections.stop()
    assert squatter.seen, "the squatter answered the unauthenticated health check"  # type: ignore[attr-defined]
    for headers in squatter.seen:  # type: ignore[attr-defined]
        assert "x-api-key" not in headers and "authorization" not in headers
        assert not any("gpf_sentinel" in value or (connections.local_key or "?") in value
                       for value in headers.values())


def test_an_explicitly_configured_url_is_trusted_without_the_ownership_probe(
        tmp_path: Path, squatter: http.server.ThreadingHTTPServer, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(embedded, "listener_is_ours", lambda port: False)
    url = f"http://127.0.0.1:{squatter.server_address[1]}"
    connections = start_demo_or_connect(console_settings(tmp_path, url),
                                        directory=tmp_path / "data", gpu_present=True)
    try:
        assert connections.origin == "configured" and connections.local_url == url
    finally:
        connections.stop()


def test_demo_nodes_keep_heartbeating_and_sampling_into_the_embedded_server(
        tmp_path: Path, refused_url: str) -> None:
    import time

    settings = console_settings(tmp_path, refused_url).with_overrides({"server.heartbeat_interval_s": 2})
    connections = start_demo_or_connect(settings, directory=tmp_path / "data", gpu_present=False,
                                        demo_nodes=4)
    try:
        assert connections.sample_ready.wait(60)
        names = {node.name for node in connections.nodes}
        assert "inf-l40s-01" in names  # the sample data's stale host before live_hosts
        with GpuFleetClient(connections.local_url, api_key=connections.local_key) as client:
            def demo_hosts() -> dict[str, HostInfo]:
                return {h.hostname: h for h in client.hosts().hosts
                        if h.hostname in names and h.agent_version == "simulated"}

            deadline = time.monotonic() + 15
            while len(first := demo_hosts()) < len(names) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert first.keys() == names  # announced at start, labelled simulated
            assert all(h.status == "alive" for h in first.values()), first
            assert all(h.last_sample_at is not None for h in first.values())

            def advanced(later: dict[str, HostInfo]) -> bool:
                return all(later[n].last_heartbeat > first[n].last_heartbeat
                           and later[n].last_sample_at > first[n].last_sample_at  # type: ignore[operator]
                           for n in names)

            while not advanced(later := demo_hosts()) and time.monotonic() < deadline:
                time.sleep(0.05)  # a round every heartbeat_interval_s / 2 = 1 s
            assert advanced(later)
            # a fresh sample with a fresh heartbeat: never "heartbeat 1s ago, last sample 15m ago"
            assert all(abs(h.last_heartbeat - h.last_sample_at) < timedelta(seconds=5)  # type: ignore[operator]
                       for h in later.values())
            everyone = {h.hostname: h for h in client.hosts().hosts}
            assert all(everyone[n].status == "alive" for n in names)
            assert everyone["edge-l4-01"].status == "offline"  # the sample data's dead host stays dead
    finally:
        connections.stop()


async def test_the_data_source_waits_for_the_sample_month(tmp_path: Path, refused_url: str) -> None:
    import asyncio
    import threading

    from gpufleet.console.datasource import ClientDataSource

    settings = console_settings(tmp_path, refused_url)
    # A server without the sample month: the gate below stands for one still loading.
    connections = await asyncio.to_thread(start_demo_or_connect, settings, directory=tmp_path / "data",
                                          gpu_present=True, demo_nodes=0)
    try:
        gate = threading.Event()
        source = ClientDataSource.connect(connections.local_url, connections.local_key, ready=gate)
        today = datetime.now(UTC).date()
        pending = asyncio.ensure_future(source.chargeback_report(today - timedelta(days=30), today))
        for _ in range(20):  # let the loop run: the report must not go out before the gate opens
            await asyncio.sleep(0)
        assert not pending.done()
        gate.set()
        report = await asyncio.wait_for(pending, 30)
        assert report.summary is not None  # answered once the gate opened
        await source.aclose()
    finally:
        await asyncio.to_thread(connections.stop)

"""ServerApp and EmbeddedServer as a whole: the injected clock and the in-process sampler."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from server.embedded import EmbeddedServer
from server.gpu.simulated import SimulatedBackend
from server.schemas import HeartbeatResult, HostsResponse
from tests.api_server import api_settings, store_app

FROZEN = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


async def wait_until(condition, *, timeout: float = 20.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    """Poll ``condition`` every 20 ms; fail (not hang) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_the_clock_argument_stamps_heartbeats_and_the_hosts_listing(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb", clock=lambda: FROZEN) as srv:
        sent = await srv.http.post("/v1/agent/heartbeat", headers=srv.auth("ingest"),
                                   json={"agent_version": "1.0", "gpu_count": 2, "hostname": "n1"})
        assert HeartbeatResult.model_validate(sent.json()).received_at == FROZEN
        hosts = HostsResponse.model_validate(
            (await srv.http.get("/v1/agent/hosts", headers=srv.auth("read"))).json())
    assert hosts.generated_at == FROZEN
    assert [(h.hostname, h.last_heartbeat) for h in hosts.hosts] == [("n1", FROZEN)]


def test_embedded_server_passes_its_clock_to_the_app(tmp_path: Path) -> None:
    from server.store import MetricsStore

    with MetricsStore.open(tmp_path / "db.duckdb") as store:
        key = store.create_key("agent", ["ingest"], "default").key
        server = EmbeddedServer(api_settings(), backend=SimulatedBackend(), store=store,
                                clock=lambda: FROZEN)
        with server:
            assert server.app is not None and server.app.context.now() == FROZEN
            response = httpx.post(f"{server.url}/v1/agent/heartbeat",
                                  headers={"Authorization": f"Bearer {key}"},
                                  json={"agent_version": "1.0", "gpu_count": 1, "hostname": "n"})
    assert HeartbeatResult.model_validate(response.json()).received_at == FROZEN

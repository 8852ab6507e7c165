"""ServerApp and EmbeddedServer as a whole: the injected clock and the in-process sampler."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from gpufleet.server.embedded import EmbeddedServer
from gpufleet.server.gpu.simulated import SimulatedBackend
from gpufleet.server.schemas import HeartbeatResult, HostsResponse
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
    from gpufleet.server.store import MetricsStore

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


class SlowTicks(SimulatedBackend):
    """A node whose readings take as long as the test says, on the test's monotonic clock."""

    def __init__(self, durations: list[float]) -> None:
        super().__init__()
        self.monotonic = 100.0
        self.durations = durations
        self.scheduled: list[float | None] = []  # the app's next_sample_at seen at each tick
        self.app = None

    def snapshot(self):  # type: ignore[no-untyped-def]
        self.scheduled.append(getattr(self.app, "next_sample_at", "missing"))
        self.monotonic += self.durations.pop(0) if self.durations else 0.0
        return super().snapshot()


async def test_the_in_process_sampler_ticks_on_a_grid_after_the_last_tick_finished(
        tmp_path: Path) -> None:
    from gpufleet.server.app import ServerApp
    from gpufleet.server.store import MetricsStore

    backend = SlowTicks([0.4, 2.95])  # a quick tick, then one that overruns two grid points
    settings = api_settings(**{"sampler.enabled": True, "sampler.interval_s": 1.0})
    with MetricsStore.open(tmp_path / "db.duckdb") as store:
        app = ServerApp(settings, backend=backend, store=store, monotonic=lambda: backend.monotonic)
        backend.app = app
        await app.start("127.0.0.1", 0)
        try:
            await wait_until(lambda: len(backend.scheduled) >= 3, what="three ticks")
        finally:
            await app.stop()
    # Started at 100: the quick tick ends at 100.4 -> 101; the slow one ends at 103.35 -> 104.
    assert backend.scheduled[:3] == [None, 101.0, 104.0]
    assert app.samples_written > 0


async def test_the_in_process_samples_show_as_the_nodes_last_sample(tmp_path: Path) -> None:
    settings = api_settings(**{"sampler.enabled": True})
    async with store_app(tmp_path / "db.duckdb", settings) as srv:
        store = srv.app.store
        assert store is not None
        await wait_until(lambda: srv.app.samples_written > 0 and store.list_hosts(
            "default", datetime.now(UTC), 300.0), what="the first in-process samples and heartbeat")
        hosts = HostsResponse.model_validate(
            (await srv.http.get("/v1/agent/hosts", headers=srv.auth("read"))).json()).hosts
    # The simulated node's own name, for the heartbeat and the samples alike.
    assert [h.hostname for h in hosts] == [SimulatedBackend().node_name]
    assert hosts[0].last_sample_at is not None


async def test_serves_own_sampler_attributes_gpus_like_the_agent(tmp_path: Path, fake_nvml) -> None:  # type: ignore[no-untyped-def]
    """`gpufleet serve` alone on a workstation: a Slurm job's GPU is charged to its account."""
    import os
    import subprocess
    import sys

    from gpufleet.server.app import ServerApp
    from gpufleet.server.gpu.nvml import NvmlBackend
    from gpufleet.server.store import MetricsStore

    env = dict(os.environ, SLURM_JOB_ID="777", SLURM_JOB_ACCOUNT="vision-team",
               GPUFLEET_MODEL_TAG="vit-huge")
    child = subprocess.Popen([sys.executable, "-c", "import sys; print(flush=True); sys.stdin.read()"],
                             env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    # /proc shows the job's environment only once the child has exec'd: wait for its line
    assert child.stdout is not None and child.stdout.readline() == b"\n"
    try:
        fake_nvml.configure([
            fake_nvml.FakeGpu(uuid="GPU-idle"),
            fake_nvml.FakeGpu(uuid="GPU-job", compute_processes=[fake_nvml.FakeProcess(child.pid, 1000)]),
        ])
        settings = api_settings(**{"sampler.enabled": True, "agent.default_team_id": "platform"})
        with MetricsStore.open(tmp_path / "db.duckdb") as store:
            app = ServerApp(settings, backend=NvmlBackend(fake_nvml), store=store)
            await app.start("127.0.0.1", 0)
            try:
                await wait_until(lambda: app.samples_written >= 2, what="the first in-process tick")
            finally:
                await app.stop()
            rows = store.query("SELECT gpu_uuid, team_id, model_tag, job_id, scheduler_source "
                               "FROM samples ORDER BY gpu_uuid")
    finally:
        child.stdin.close()  # type: ignore[union-attr]
        child.wait(timeout=10)
    assert [tuple(r) for r in rows] == [
        ("GPU-idle", "platform", None, None, "manual"),
        ("GPU-job", "vision-team", "vit-huge", "777", "slurm"),
    ]

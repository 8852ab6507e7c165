"""The agent against a real server on loopback over a real DuckDB store: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from gpufleet.server.agent.attribution import ProcessAttributor
from gpufleet.server.agent.runner import EXIT_AUTH, AgentRunner, encode_batch
from gpufleet.server.agent.sampler import Sampler
from gpufleet.server.agent.spool import Spool
from gpufleet.server.app import ServerApp
from gpufleet.server.client import AsyncGpuFleetClient
from gpufleet.server.config import AgentSettings, Settings
from gpufleet.server.gpu.nvml import NvmlBackend
from gpufleet.server.store import MetricsStore

REPO = Path(__file__).resolve().parent.parent
GPUS = 8


# ---------------------------------------------------------------- helpers


async def wait_until(condition, *, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``condition`` every 50 ms; fail the test (not hang it) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


def server_settings(**overrides: Any) -> Settings:
    """A server that does not sample itself: only the agent's samples land in its store."""
    return Settings().with_overrides({"sampler.enabled": False, **overrides})


async def start_server(settings: Settings, backend, store: MetricsStore, port: int = 0) -> ServerApp:
    app = ServerApp(settings, backend=backend, store=store)
    await app.start("127.0.0.1", port)
    return app


def stored(store: MetricsStore) -> list[tuple[Any, ...]]:
    """(gpu_uuid, ts, job_id, team_id, scheduler_source, energy_delta_j) of every stored sample."""
    return store.query(
        "SELECT gpu_uuid, ts, job_id, team_id, scheduler_source, energy_delta_j "
        "FROM samples WHERE account = 'default' ORDER BY ts, gpu_uuid"
    )


def as_key(sample: dict[str, Any]) -> tuple[str, datetime]:
    ts = datetime.strptime(sample["timestamp"], "%Y-%m-%dT%H:%M:%SZ")
    return sample["gpu_uuid"], ts


def stored_keys(store: MetricsStore) -> list[tuple[str, datetime]]:
    return sorted((uuid, ts.replace(tzinfo=None)) for uuid, ts, *_ in stored(store))


class RecordingSampler(Sampler):
    """The real sampler, remembering every sample it produced."""

    taken: list[dict[str, Any]]

    def sample(self) -> list[dict[str, Any]]:
        samples = super().sample()
        self.taken = [*getattr(self, "taken", []), *samples]
        return samples


class RecordingTransport(httpx.AsyncBaseTransport):
    """The real HTTP transport, noting each request's path, start, end, status and Retry-After."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.log: list[dict[str, Any]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        entry: dict[str, Any] = {"path": request.url.path, "start": time.monotonic()}
        try:
            response = await self._inner.handle_async_request(request)
        except httpx.TransportError:
            entry.update(end=time.monotonic(), status=None, retry_after=None)
            self.log.append(entry)
            raise
        entry.update(end=time.monotonic(), status=response.status_code,
                     retry_after=response.headers.get("retry-after"))
        self.log.append(entry)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


AGENT = AgentSettings(interval_s=1.0, retry_base_s=0.2, retry_max_s=1.0, flush_timeout_s=10.0)


@pytest.fixture
def store(tmp_path: Path):
    with MetricsStore.open(tmp_path / "metrics.duckdb") as s:
        yield s


@pytest.fixture
def key(store: MetricsStore) -> str:
    return store.create_key("agent", ["ingest"], "default").key


@pytest.fixture
def nvml_node(fake_nvml: ModuleType):
    fake_nvml.configure([
        fake_nvml.FakeGpu(uuid=f"GPU-{i:08d}-1111-2222-3333-444444444444", power_mw=250_000,
                          util_gpu=70, util_memory=30, used_mib=30_000)
        for i in range(GPUS)
    ])
    backend = NvmlBackend(fake_nvml)
    yield fake_nvml, backend
    backend.close()


def make_runner(url: str, key: str, backend, spool: Spool, *, settings: AgentSettings = AGENT,
                transport: httpx.AsyncBaseTransport | None = None) -> tuple[AgentRunner, RecordingSampler, AsyncGpuFleetClient]:
    sampler = RecordingSampler(backend, ProcessAttributor(settings))
    client = AsyncGpuFleetClient(url, api_key=key, transport=transport)
    return AgentRunner(settings, sampler=sampler, spool=spool, client=client), sampler, client


# ---------------------------------------------------------------- tests


async def test_an_outage_of_several_intervals_loses_and_doubles_nothing(tmp_path, store, key, nvml_node) -> None:
    _, backend = nvml_node
    settings = server_settings()
    app = await start_server(settings, backend, store)
    port = int(app.url.rsplit(":", 1)[1])
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    runner, sampler, client = make_runner(app.url, key, backend, spool)
    stop = asyncio.Event()
    run = asyncio.ensure_future(runner.run(stop))
    try:
        await wait_until(lambda: runner.delivery.stats.sent_samples >= 2 * GPUS, what="first deliveries")
        await app.stop()
        before = runner.delivery.stats.failures
        await wait_until(lambda: spool.stats.pending_records >= 3 and runner.delivery.stats.failures > before,
                         what="three batches spooled during the outage")
        app = await start_server(settings, backend, store, port=port)  # same port: the agent's URL
        await wait_until(lambda: spool.stats.pending_records == 0 and runner.samples_taken > 0,
                         what="the spool drained after recovery")
        stop.set()
        assert await run == 0
    finally:
        stop.set()
        await asyncio.gather(run, return_exceptions=True)
        await client.aclose()
        spool.close()
        await app.stop()
    taken = sorted(as_key(s) for s in sampler.taken)
    # two ticks before the outage, three during it (the final one may share a second and add none)
    assert len(taken) == runner.samples_taken >= 5 * GPUS
    assert stored_keys(store) == taken  # every sample, once
    assert spool.stats.dropped_records == 0


async def test_a_429_with_retry_after_is_honoured(tmp_path, store, key, nvml_node) -> None:
    _, backend = nvml_node
    # One ingest token, back every 1.5 s: a 1 s agent is refused (Retry-After: 1) and must
    # wait as told; once it has, the token is back and the batch goes through.
    settings = server_settings(**{"rate_limits.ingest": {"requests": 1, "per_s": 1.5}})
    app = await start_server(settings, backend, store)
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    transport = RecordingTransport()
    runner, sampler, client = make_runner(app.url, key, backend, spool, transport=transport)
    stop = asyncio.Event()
    run = asyncio.ensure_future(runner.run(stop))

    def ingests() -> list[dict[str, Any]]:
        return [e for e in transport.log if e["path"] == "/v1/metrics/ingest"]

    def success_after_two_refusals() -> bool:
        statuses = [e["status"] for e in ingests()]
        refusals = [i for i, status in enumerate(statuses) if status == 429]
        return len(refusals) >= 2 and 200 in statuses[refusals[1]:]

    try:
        await wait_until(success_after_two_refusals, what="two 429s and a success after them")
        stop.set()
        assert await run == 0
    finally:
        stop.set()
        await asyncio.gather(run, return_exceptions=True)
        await client.aclose()
        spool.close()
        await app.stop()
    log = ingests()
    for refused, following in itertools.pairwise(log):
        if refused["status"] == 429:
            assert refused["retry_after"] is not None
            assert following["start"] >= refused["end"] + float(refused["retry_after"]) - 0.01
    # Stopped while rate-limited: what the server did not take yet waits in the spool.
    keys, taken = stored_keys(store), {as_key(s) for s in sampler.taken}
    assert len(keys) == len(set(keys)) and set(keys) <= taken
    assert len(keys) + spool.stats.pending_samples == len(taken)


async def test_slurm_job_of_a_child_process_lands_in_the_store(tmp_path, store, key, nvml_node) -> None:
    fake, backend = nvml_node
    env = dict(os.environ, SLURM_JOB_ID="913", SLURM_JOB_ACCOUNT="genomics")
    child = subprocess.Popen([sys.executable, "-c", "import sys; print(flush=True); sys.stdin.read()"],
                             env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    # /proc shows the job's environment only once the child has exec'd: wait for its line
    assert child.stdout is not None and child.stdout.readline() == b"\n"
    try:
        fake.set_processes(5, compute=[fake.FakeProcess(child.pid, 20_000)])
        app = await start_server(server_settings(), backend, store)
        with Spool(tmp_path / "spool", max_bytes=1 << 20) as spool:
            runner, _, client = make_runner(app.url, key, backend, spool)
            assert await runner.run_once() == 0
            await client.aclose()
        await app.stop()
    finally:
        child.stdin.close()
        child.wait(timeout=10)
    rows = {uuid: rest for uuid, _, *rest in stored(store)}
    assert len(rows) == GPUS
    hosts = store.list_hosts("default", datetime.now(UTC), 300.0)
    assert [(h.gpu_count, h.status) for h in hosts] == [(GPUS, "alive")]  # the heartbeat at start
    assert rows["GPU-00000005-1111-2222-3333-444444444444"][:3] == ["913", "genomics", "slurm"]
    assert rows["GPU-00000004-1111-2222-3333-444444444444"][:3] == [None, None, "manual"]


async def test_a_refused_batch_is_set_aside_and_the_rest_delivered(tmp_path, store, key, nvml_node) -> None:
    _, backend = nvml_node
    app = await start_server(server_settings(), backend, store)
    bad = [{"timestamp": "2026-01-01T00:00:00Z", "gpu_index": 0, "gpu_uuid": "GPU-x",
            "power_draw_w": 99_999, "utilization_gpu_pct": 1, "utilization_memory_pct": 1,
            "temperature_c": 40, "memory_used_mb": 1}]
    with Spool(tmp_path / "spool", max_bytes=1 << 20) as spool:
        spool.append(encode_batch(bad), 1)
        runner, sampler, client = make_runner(app.url, key, backend, spool)
        assert await runner.run_once() == 0
        await client.aclose()
        assert spool.stats.pending_records == 0
    await app.stop()
    rejected = list((tmp_path / "spool" / "rejected").glob("*.error.txt"))
    assert len(rejected) == 1 and "power_draw_w" in rejected[0].read_text()
    assert stored_keys(store) == sorted(as_key(s) for s in sampler.taken)  # the good batch got through


async def test_an_unknown_key_stops_the_agent_with_a_clear_message(tmp_path, store, nvml_node, caplog) -> None:
    _, backend = nvml_node
    app = await start_server(server_settings(), backend, store)
    secret = "gf_not-a-real-key-0123456789"
    with Spool(tmp_path / "spool", max_bytes=1 << 20) as spool:
        runner, _, client = make_runner(app.url, secret, backend, spool)
        assert await asyncio.wait_for(runner.run(asyncio.Event()), 30) == EXIT_AUTH
        await client.aclose()
        assert spool.stats.pending_records >= 1  # kept for when the key is fixed
    await app.stop()
    assert "refused the API key" in caplog.text
    assert secret not in caplog.text


# ---------------------------------------------------------------- the real process


def agent_process(url: str, key_file: Path, spool: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, GPUFLEET_AGENT__RETRY_BASE_S="0.2", GPUFLEET_AGENT__RETRY_MAX_S="1")
    env.pop("GPUFLEET_KEY", None)
    with open(log, "ab") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "gpufleet.server.cli", "agent", "--server", url, "--key-file", str(key_file),
             "--interval", "1", "--simulate", "--spool-dir", str(spool), "--verbose"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
        )


async def test_killed_mid_outage_the_restarted_agent_delivers_its_spool(tmp_path, store, key, nvml_node) -> None:
    _, backend = nvml_node
    key_file = tmp_path / "agent.key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    settings = server_settings(**{"server.simulate": True})  # the agent runs --simulate
    app = await start_server(settings, backend, store)
    port = int(app.url.rsplit(":", 1)[1])
    log = tmp_path / "agent.log"
    first = agent_process(app.url, key_file, tmp_path / "spool", log)
    second = None
    try:
        await wait_until(lambda: store.sample_count("default") > 0, what="the agent's first delivery")
        await app.stop()
        down_at = datetime.now(UTC).replace(tzinfo=None)
        seen = len(log.read_text())
        # Three: the first may have been sampled just before the stop (timestamps are whole
        # seconds, truncated), the next two are a grid step later, so surely inside the outage.
        await wait_until(lambda: log.read_text()[seen:].count("samples spooled") >= 3
                         and "ingest failed" in log.read_text()[seen:],
                         what="three ticks spooled during the outage")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        killed_at = datetime.now(UTC).replace(tzinfo=None)
        app = await start_server(settings, backend, store, port=port)
        second = agent_process(app.url, key_file, tmp_path / "spool", log)
        # Timestamps are whole seconds, truncated: one past the kill is the second agent's.
        await wait_until(lambda: any(ts > killed_at for _, ts in stored_keys(store)),
                         what="the second agent's samples")
        await wait_until(lambda: len({ts for _, ts in stored_keys(store) if down_at < ts < killed_at}) >= 2,
                         what="the outage's samples from the spool")
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=20) == 0
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        await app.stop()
    keys = stored_keys(store)
    assert len(keys) == len(set(keys))
    outage = sorted({ts for _, ts in keys if down_at < ts < killed_at})
    gpus = len({uuid for uuid, _ in keys})
    # Every second of the outage the killed agent saw is there, for every GPU of the node.
    assert all(b - a <= timedelta(seconds=2) for a, b in itertools.pairwise(outage))
    assert all(sum(ts == t for _, ts in keys) == gpus for t in outage)
    assert "agent status" in log.read_text()


async def test_after_an_agent_run_the_hosts_listing_shows_its_last_sample(tmp_path, store, key, nvml_node) -> None:
    _, backend = nvml_node
    reader = store.create_key("reader", ["read"], "default").key
    app = await start_server(server_settings(), backend, store)
    try:
        with Spool(tmp_path / "spool", max_bytes=1 << 20) as spool:
            runner, sampler, client = make_runner(app.url, key, backend, spool)
            assert await runner.run_once() == 0
            await client.aclose()
        async with httpx.AsyncClient(base_url=app.url) as http:
            listing = (await http.get("/v1/agent/hosts", headers={"Authorization": f"Bearer {reader}"})).json()
    finally:
        await app.stop()
    hostname = backend.snapshot().node.hostname
    assert {s["hostname"] for s in sampler.taken} == {hostname}
    (host,) = listing["hosts"]
    assert host["hostname"] == hostname
    assert host["last_sample_at"] is not None


# ---------------------------------------------------------------- gpufleet agent --once, run after run


def agent_once(url: str, secret: str, spool: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {"GPUFLEET_KEY": secret, "PATH": "/usr/bin:/bin", "HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "gpufleet.server.cli", "agent", "--server", url, "--once", "--simulate",
         "--spool-dir", str(spool)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )


async def test_agent_once_run_after_run_delivers_every_sample_exactly_once(tmp_path, store, key) -> None:
    from gpufleet.server.gpu.simulated import SimulatedBackend

    local = SimulatedBackend()
    gpus = len(local.snapshot().gpus)
    app = await start_server(server_settings(**{"server.simulate": True}), local, store)
    spool = tmp_path / "spool"
    try:
        for run in range(1, 4):
            done = await asyncio.to_thread(agent_once, app.url, key, spool, tmp_path)
            assert done.returncode == 0, done.stderr
            await wait_until(lambda run=run: store.sample_count("default") >= run * gpus, what=f"run {run}'s samples")
            assert store.sample_count("default") == run * gpus, done.stderr
            # Timestamps are whole seconds: the next run samples in a later one.
            latest = max(ts for _, ts in stored_keys(store))
            await wait_until(lambda latest=latest: datetime.now(UTC).replace(tzinfo=None, microsecond=0) > latest,
                             what="the next second")
        refused = await asyncio.to_thread(agent_once, app.url, "gf_not-a-real-key-0123456789", spool, tmp_path)
    finally:
        await app.stop()
        local.close()
    keys = stored_keys(store)
    assert len(keys) == len(set(keys)) == 3 * gpus  # every sample of every run, once
    assert len({ts for _, ts in keys}) == 3
    assert refused.returncode == EXIT_AUTH
    assert "refused the API key" in refused.stderr and "gf_not-a-real-key" not in refused.stderr
    assert store.sample_count("default") == 3 * gpus  # the refused run's sample waits in the spool
    assert sum(p.stat().st_size for p in spool.rglob("seg-*.log")) > 0

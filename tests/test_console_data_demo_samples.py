"""The console's demo nodes post samples as well as heartbeats, so Hosts shows a fresh "last sample"."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from gpufleet.console.demo_heartbeat import DemoHeartbeats, DemoHost
from gpufleet.server.client import GpuFleetClient
from gpufleet.server.config import Settings
from gpufleet.server.embedded import EmbeddedServer
from gpufleet.server.gpu.simulated import SimulatedBackend, simulated_backends
from gpufleet.server.sample import load_sample_month
from gpufleet.server.schemas import HostInfo
from gpufleet.server.store import MetricsStore
from gpufleet.server.store.timeutil import to_db

ACCOUNT = "default"
DEMO_NODES = 4  # ws-gpu-01, dgx-a100-01, dgx-h100-01, inf-l40s-01
OFFLINE_SAMPLE_HOST = "edge-l4-01"


@dataclass
class DemoServer:
    url: str
    key: str
    store: MetricsStore
    backends: list[SimulatedBackend]


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    """A real server over a real store holding the sample month, the demo nodes passed as live hosts."""
    backends = simulated_backends(DEMO_NODES)
    settings = Settings().with_overrides({"server.simulate": True, "sampler.enabled": False})
    store = MetricsStore.open(tmp_path_factory.mktemp("demo-samples") / "console.duckdb")
    server: EmbeddedServer | None = None
    try:
        load_sample_month(store, ACCOUNT, heartbeat_interval_s=settings.server.heartbeat_interval_s,
                          live_hosts=[b.node_name for b in backends])
        key = store.create_key("console-test", ["operator", "ingest", "read"], ACCOUNT).key
        server = EmbeddedServer(settings, store=store)
        yield DemoServer(server.start("127.0.0.1", 0), key, store, backends)
    finally:
        if server is not None:
            server.stop()
        store.close()


def hosts_by_name(server: DemoServer) -> dict[str, HostInfo]:
    with GpuFleetClient(server.url, api_key=server.key) as client:
        return {h.hostname: h for h in client.hosts().hosts}


def test_the_sample_data_never_makes_a_demo_node_stale_or_offline(demo_server: DemoServer) -> None:
    hosts = hosts_by_name(demo_server)
    for backend in demo_server.backends:
        assert hosts[backend.node_name].status == "alive", backend.node_name
    assert hosts[OFFLINE_SAMPLE_HOST].status == "offline"


def test_one_round_posts_a_sample_per_demo_gpu_and_advances_last_sample(demo_server: DemoServer) -> None:
    demo = [DemoHost(b.node_name, len(b.fleet.node(b.node_name).gpus), b) for b in demo_server.backends]
    # one sample per GPU, and one more for every further workload on a shared GPU
    gpus = sum(max(1, len(b.fleet.jobs_for(b.node_name, i)))
               for b in demo_server.backends for i in range(len(b.fleet.node(b.node_name).gpus)))
    assert gpus > sum(host.gpu_count for host in demo)  # inf-l40s-01's GPU 3 is shared
    before_hosts = hosts_by_name(demo_server)
    before_count = demo_server.store.sample_count(ACCOUNT)
    beats = DemoHeartbeats(demo_server.url, demo_server.key, demo, interval_s=60)

    started = datetime.now(UTC).replace(microsecond=0)
    assert beats.beat_once() == len(demo)
    finished = datetime.now(UTC)

    assert beats.samples == gpus
    assert demo_server.store.sample_count(ACCOUNT) == before_count + gpus
    after = hosts_by_name(demo_server)
    for host in demo:
        shown = after[host.hostname]
        assert shown.last_sample_at is not None and shown.last_heartbeat is not None
        assert started <= shown.last_sample_at <= finished, host.hostname
        assert started <= shown.last_heartbeat <= finished, host.hostname
        assert shown.last_sample_at > before_hosts[host.hostname].last_sample_at  # type: ignore[operator]
        assert shown.status == "alive"
    offline = after[OFFLINE_SAMPLE_HOST]
    assert offline.status == "offline"
    assert offline.last_sample_at == before_hosts[OFFLINE_SAMPLE_HOST].last_sample_at  # not touched


def test_demo_samples_carry_the_snapshots_readings_and_tags(demo_server: DemoServer) -> None:
    backend = demo_server.backends[0]
    beats = DemoHeartbeats(demo_server.url, demo_server.key,
                           [DemoHost(backend.node_name, len(backend.fleet.node(backend.node_name).gpus),
                                     backend)], interval_s=60)
    since = datetime.now(UTC).replace(microsecond=0)
    beats.beat_once()
    snapshot = backend.snapshot()
    rows = demo_server.store.query(  # each of this node's GPUs' latest sample
        """SELECT gpu_index, gpu_uuid, gpu_name, power_draw_w, memory_used_mb, temperature_c,
                  team_id, model_tag, ts FROM samples
           WHERE account = ? AND hostname = ? AND list_contains(?, gpu_uuid)
           QUALIFY row_number() OVER (PARTITION BY gpu_uuid ORDER BY ts DESC) = 1
           ORDER BY gpu_index""",
        [ACCOUNT, backend.node_name, [g.uuid for g in snapshot.gpus]])
    assert [r[0] for r in rows] == [g.index for g in snapshot.gpus]
    for row, gpu in zip(rows, snapshot.gpus, strict=True):
        _index, uuid, name, power, memory, temperature, team, model, ts = row
        assert (uuid, name) == (gpu.uuid, gpu.name)
        assert power >= 0 and memory > 0 and temperature > 0
        assert (team, model) == (gpu.team_id, gpu.model_tag)  # the holder's tags, when the GPU has one
        assert ts.microsecond == 0 and to_db(since) <= ts  # this round's, in whole seconds
    assert any(r[6] for r in rows), "the demo node runs attributed jobs"


def test_a_rejected_sample_batch_is_logged_without_the_key(caplog: pytest.LogCaptureFixture,
                                                          demo_server: DemoServer) -> None:
    backend = demo_server.backends[1]
    reader = demo_server.store.create_key("console-read-only", ["read"], ACCOUNT).key
    beats = DemoHeartbeats(demo_server.url, reader, [DemoHost(backend.node_name, 1, backend)], interval_s=60)
    assert beats.beat_once() == 0  # heartbeats need the ingest scope too
    assert beats.samples == 0
    assert "demo samples" in caplog.text and "were not stored" in caplog.text
    assert reader not in caplog.text

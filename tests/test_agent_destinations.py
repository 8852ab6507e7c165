"""The agent's spool is per destination: another server, key or kind never gets its samples."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from gpufleet.server.agent.destinations import (
    DESTINATION_FILE,
    destination_dir,
    key_fingerprint,
    normalized_url,
)
from gpufleet.server.agent.spool import Spool, pending_samples
from gpufleet.server.app import ServerApp
from gpufleet.server.config import Settings
from gpufleet.server.gpu.simulated import SimulatedBackend
from gpufleet.server.sample import sample_fleet_gpu_uuids
from gpufleet.server.store import MetricsStore
from tests.fake_gpu_process import GPU_UUID, agent_once

KEY = "gf_" + "k" * 40


def test_a_destination_is_the_url_the_key_and_the_kind() -> None:
    base = Path("/spool")
    one = destination_dir(base, "http://collector:8765", KEY, simulated=False)
    assert one == destination_dir(base, "HTTP://Collector:8765/", KEY, simulated=False)
    assert normalized_url("https://c.example/") == "https://c.example:443"
    assert one.name.startswith("real-")
    others = {destination_dir(base, "http://collector:8766", KEY, simulated=False),
              destination_dir(base, "http://collector:8765", KEY + "x", simulated=False),
              destination_dir(base, "http://collector:8765", KEY, simulated=True)}
    assert one not in others and len(others) == 3
    assert KEY not in str(others) and key_fingerprint(KEY) not in str(others)


def stored_uuids(store: MetricsStore) -> set[str]:
    return {row[0] for row in store.query("SELECT DISTINCT gpu_uuid FROM samples")}


async def serving(store: MetricsStore, **settings: Any) -> ServerApp:
    app = ServerApp(Settings().with_overrides({"sampler.enabled": False, **settings}),
                    backend=SimulatedBackend(), store=store)
    await app.start("127.0.0.1", 0)
    return app


async def test_real_runs_never_send_simulated_samples_and_no_server_gets_anothers(
        tmp_path: Path, refused_url: str) -> None:
    spool = tmp_path / "spool"
    simulated = set(sample_fleet_gpu_uuids())
    with MetricsStore.open(tmp_path / "real.duckdb") as store:
        key = store.create_key("agent", ["ingest"], "default").key
        # simulated samples spooled against a dead port: they wait for that server only
        down = await asyncio.to_thread(agent_once, refused_url, key, spool, simulate=True, home=tmp_path)
        assert down.returncode == 1, down.stderr
        for_dead = destination_dir(spool, refused_url, key, simulated=True)
        waiting = pending_samples(for_dead)
        assert waiting > 0
        info = json.loads((for_dead / DESTINATION_FILE).read_text())
        assert info == {"server": refused_url, "key_sha256": key_fingerprint(key), "simulated": True}
        assert key not in (for_dead / DESTINATION_FILE).read_text()

        app = await serving(store)  # a server of real data
        try:
            refused = await asyncio.to_thread(agent_once, app.url, key, spool, simulate=True,
                                              home=tmp_path)
            assert refused.returncode == 2
            assert "refused simulated samples (409" in refused.stderr
            assert pending_samples(destination_dir(spool, app.url, key, simulated=True)) > 0

            real = await asyncio.to_thread(agent_once, app.url, key, spool, simulate=False,
                                           home=tmp_path)
            assert real.returncode == 0, real.stderr
        finally:
            await app.stop()
        assert stored_uuids(store) == {GPU_UUID}  # the real GPU's sample, nothing simulated
        assert store.simulated is None
    # each spool it did not send is named once, and left as it was
    named = [line for line in real.stderr.splitlines() if "they stay there" in line]
    assert len(named) == 2, real.stderr
    assert any(f"the spool {for_dead} holds {waiting} simulated samples for {refused_url}" in line
               for line in named)
    assert pending_samples(for_dead) == waiting
    assert not simulated & {GPU_UUID}


async def test_a_simulated_run_sends_only_its_own_servers_samples(tmp_path: Path, refused_url: str) -> None:
    spool = tmp_path / "spool"
    with MetricsStore.open(tmp_path / "sim.duckdb") as store:
        key = store.create_key("agent", ["ingest"], "default").key
        down = await asyncio.to_thread(agent_once, refused_url, key, spool, simulate=True, home=tmp_path)
        assert down.returncode == 1
        waiting = pending_samples(destination_dir(spool, refused_url, key, simulated=True))
        app = await serving(store, **{"server.simulate": True})
        try:
            done = await asyncio.to_thread(agent_once, app.url, key, spool, simulate=True,
                                           home=tmp_path)
        finally:
            await app.stop()
        assert done.returncode == 0, done.stderr
        gpus = len(SimulatedBackend().snapshot().gpus)
        assert store.sample_count() == gpus  # this run's samples; the dead port's stayed behind
        assert store.simulated is not None
    assert pending_samples(destination_dir(spool, refused_url, key, simulated=True)) == waiting


def test_batches_an_older_agent_spooled_into_the_base_stay_and_are_named(
        tmp_path: Path, refused_url: str) -> None:
    spool = tmp_path / "spool"
    with Spool(spool, max_bytes=1 << 20) as old:  # the layout before destinations
        old.append(b'[{"gpu_uuid":"GPU-old"}]', 1)
    done = agent_once(refused_url, KEY, spool, simulate=True, home=tmp_path)
    assert done.returncode == 1
    (line,) = [ln for ln in done.stderr.splitlines() if "they stay there" in ln]
    assert f"the spool {spool} holds 1 sample of an unknown destination" in line
    assert pending_samples(spool) == 1

"""After a key rotation the agent delivers what it spooled under the old secret, and only that.

Real agent runs (``python -m gpufleet.server.cli agent --once`` on a machine with one
fake GPU) against a real server on loopback over a real DuckDB store.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gpufleet.server.agent.adoption import Adoption
from gpufleet.server.agent.delivery import Backoff, Step
from gpufleet.server.agent.destinations import (
    claim,
    destination_dir,
    record_identity,
    recorded_identity,
)
from gpufleet.server.agent.spool import Spool, pending_records, pending_samples
from gpufleet.server.app import ServerApp
from gpufleet.server.client import AsyncGpuFleetClient
from gpufleet.server.config import Settings
from gpufleet.server.gpu.simulated import SimulatedBackend
from gpufleet.server.store import MetricsStore
from tests.fake_gpu_process import GPU_UUID, agent_once, one_gpu_pythonpath

REPO = Path(__file__).resolve().parent.parent
SampleKey = tuple[str, datetime]
NOW = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def once(url: str, key: str, spool: Path, home: Path, *, simulate: bool = False
               ) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(agent_once, url, key, spool, home, simulate=simulate)


async def serving(store: MetricsStore, port: int = 0) -> ServerApp:
    app = ServerApp(Settings().with_overrides({"sampler.enabled": False}),
                    backend=SimulatedBackend(), store=store)
    await app.start("127.0.0.1", port)
    return app


async def rotate(url: str, secret: str) -> str:
    """The new secret, from ``POST /v1/keys/rotate`` sent with the old one."""
    async with AsyncGpuFleetClient(url, api_key=secret) as client:
        return (await client.rotate_key()).key


def spooled(folder: Path) -> list[SampleKey]:
    """(gpu_uuid, timestamp) of every sample waiting in a spool folder."""
    return [(s["gpu_uuid"], datetime.strptime(s["timestamp"], "%Y-%m-%dT%H:%M:%SZ"))
            for record in pending_records(folder) for s in json.loads(record.body)]


def stored(store: MetricsStore, account: str) -> set[SampleKey]:
    rows = store.query("SELECT gpu_uuid, ts FROM samples WHERE account = ?", [account])
    return {(uuid, ts.replace(tzinfo=None)) for uuid, ts in rows}


def status(run: subprocess.CompletedProcess[str]) -> tuple[int, int]:
    """(sent, already stored) from the run's last status line."""
    found = re.findall(r"agent status: \d+ samples taken, (\d+) sent \((\d+) already stored\)", run.stderr)
    assert found, run.stderr
    return int(found[-1][0]), int(found[-1][1])


async def test_what_the_old_secret_spooled_goes_out_with_the_new_one_once(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with MetricsStore.open(tmp_path / "m.duckdb") as store:
        created = store.create_key("agent", ["ingest"], "research")
        old = created.key
        app = await serving(store)
        url, port = app.url, app.http.address[1]
        first = await once(url, old, spool, tmp_path)  # the server names the key: recorded
        assert first.returncode == 0, first.stderr
        old_dir = destination_dir(spool, url, old, simulated=False)
        assert recorded_identity(old_dir) == (created.info.id, "research")
        assert old not in (old_dir / "destination.json").read_text()
        await app.stop()
        for _ in range(2):  # an outage: the old secret spools
            down = await once(url, old, spool, tmp_path)
            assert down.returncode == 1, down.stderr
        waiting = spooled(old_dir)
        assert len(waiting) == 2
        app = await serving(store, port)
        try:
            new = await rotate(url, old)
            before = stored(store, "research")
            run = await once(url, new, spool, tmp_path)
            assert run.returncode == 0, run.stderr
            after = stored(store, "research")
            again = await once(url, new, spool, tmp_path)
        finally:
            await app.stop()
    assert set(waiting) <= after  # 0 lost
    # each spooled sample sent once, with the run's own; the server stored any sample that
    # two runs took in one second once (its duplicate detection), and nothing else
    sent, already = status(run)
    assert sent == len(waiting) + 1
    assert already == sent - len(after - before)
    assert len(after - before - set(waiting)) <= 1
    assert status(again)[0] == 1  # its own sample only: the old folder is not sent again
    assert not old_dir.exists()  # emptied, and tidied away
    assert "spooled under an earlier secret of this key" in run.stderr
    assert "they stay there" not in run.stderr
    assert new not in run.stderr and old not in run.stderr


async def test_another_accounts_spool_and_a_simulated_one_are_never_sent(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with MetricsStore.open(tmp_path / "m.duckdb") as store:
        mine = store.create_key("agent", ["ingest"], "research")
        theirs = store.create_key("agent", ["ingest"], "finance")
        app = await serving(store)
        url, port = app.url, app.http.address[1]
        for secret in (mine.key, theirs.key):
            done = await once(url, secret, spool, tmp_path)
            assert done.returncode == 0, done.stderr
        # the simulated fleet, sent to this server of real data: refused (409), it stays
        refused = await once(url, mine.key, spool, tmp_path, simulate=True)
        assert refused.returncode == 2, refused.stderr
        simulated_dir = destination_dir(spool, url, mine.key, simulated=True)
        # as a run that asked the server first records it: this key's id and account
        record_identity(simulated_dir, mine.info.id, "research")
        await app.stop()
        for secret in (mine.key, theirs.key):  # an outage: both spool
            down = await once(url, secret, spool, tmp_path)
            assert down.returncode == 1, down.stderr
        their_dir = destination_dir(spool, url, theirs.key, simulated=False)
        theirs_waiting, simulated_waiting = pending_samples(their_dir), pending_samples(simulated_dir)
        assert theirs_waiting == 1 and simulated_waiting > 0
        app = await serving(store, port)
        try:
            new = await rotate(url, mine.key)
            finance_before = stored(store, "finance")
            run = await once(url, new, spool, tmp_path)
        finally:
            await app.stop()
        assert run.returncode == 0, run.stderr
        assert stored(store, "finance") == finance_before
        assert store.simulated is None
        assert {uuid for uuid, _ in stored(store, "research")} == {GPU_UUID}
    assert status(run)[0] == 2  # its own sample and the one its old secret spooled
    assert pending_samples(their_dir) == theirs_waiting
    assert pending_samples(simulated_dir) == simulated_waiting
    assert their_dir.exists() and simulated_dir.exists()
    named = [line for line in run.stderr.splitlines() if "they stay there" in line]
    assert len(named) == 2, run.stderr
    assert any(f"the spool {their_dir} holds 1 real sample for {url}" in line
               and "of account 'finance'" in line for line in named)
    assert any(f"the spool {simulated_dir} holds {simulated_waiting} simulated samples" in line
               for line in named)


# ---------------------------------------------------------------- recorded identities


def folder_with(spool: Path, url: str, secret: str, *, simulated: bool = False,
                identity: tuple[str, str] | None, uuid: str) -> Path:
    """A spool folder as an earlier run left it: one sample waiting, an identity recorded or not."""
    folder = destination_dir(spool, url, secret, simulated=simulated)
    sample = {"timestamp": NOW, "gpu_index": 0, "gpu_uuid": uuid, "power_draw_w": 100,
              "utilization_gpu_pct": 10, "utilization_memory_pct": 10, "temperature_c": 40,
              "memory_used_mb": 10}
    with Spool(folder, max_bytes=1 << 20) as s:
        s.append(json.dumps([sample]).encode(), 1)
    claim(folder, url, secret, simulated=simulated)
    if identity is not None:
        record_identity(folder, *identity)
    return folder


class CountingClient(AsyncGpuFleetClient):
    """The real client, remembering each ingest body it sent."""

    sent: list[bytes]

    async def ingest(self, samples: Any) -> Any:
        self.sent = [*getattr(self, "sent", []), samples]
        return await super().ingest(samples)


async def test_only_a_folder_with_the_same_key_id_and_account_at_the_same_url_is_adopted(
        tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with MetricsStore.open(tmp_path / "m.duckdb") as store:
        key = store.create_key("agent", ["ingest"], "research")
        other = store.create_key("other", ["ingest"], "research")
        app = await serving(store)
        try:
            url = app.url
            elsewhere = url.replace("127.0.0.1", "localhost")  # the same server by another name
            me = (key.info.id, "research")
            folders = {
                "same": folder_with(spool, url, "gf_old1", identity=me, uuid="GPU-same"),
                "no identity": folder_with(spool, url, "gf_old2", identity=None, uuid="GPU-none"),
                "another key": folder_with(spool, url, "gf_old3", identity=(other.info.id, "research"),
                                           uuid="GPU-other-key"),
                "another account": folder_with(spool, url, "gf_old4", identity=(key.info.id, "finance"),
                                               uuid="GPU-other-account"),
                "another url": folder_with(spool, elsewhere, "gf_old5", identity=me, uuid="GPU-elsewhere"),
                "simulated": folder_with(spool, url, "gf_old6", simulated=True, identity=me,
                                         uuid="GPU-simulated"),
            }
            mine = destination_dir(spool, url, key.key, simulated=False)
            Spool(mine, max_bytes=1 << 20).close()
            claim(mine, url, key.key, simulated=False)
            async with CountingClient(url, api_key=key.key) as client:
                adoption = Adoption(spool, mine, url, simulated=False, client=client, max_samples=100,
                                    max_bytes=1 << 20, backoff=Backoff(base_s=0.01, max_s=0.01))
                assert adoption.candidates == sorted(
                    folders[k] for k in ("same", "another key", "another account"))
                steps = [await adoption.step() for _ in range(3)]
                adoption.close()
        finally:
            await app.stop()
    assert [s for s, _ in steps] == [Step.SENT, Step.IDLE, Step.IDLE] and adoption.finished
    assert [json.loads(body)[0]["gpu_uuid"] for body in client.sent] == ["GPU-same"]
    assert recorded_identity(mine) == me
    assert not folders["same"].exists()
    assert all(pending_samples(folders[k]) == 1 for k in folders if k != "same")


async def test_a_server_that_cannot_be_asked_now_is_asked_again_and_nothing_goes_meanwhile(
        tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with MetricsStore.open(tmp_path / "m.duckdb") as store:
        key = store.create_key("agent", ["ingest"], "research")
        app = await serving(store)
        url, port = app.url, app.http.address[1]
        await app.stop()
        old = folder_with(spool, url, "gf_old", identity=(key.info.id, "research"), uuid="GPU-old")
        mine = destination_dir(spool, url, key.key, simulated=False)
        Spool(mine, max_bytes=1 << 20).close()
        claim(mine, url, key.key, simulated=False)
        now = [0.0]
        async with CountingClient(url, api_key=key.key) as client:
            adoption = Adoption(spool, mine, url, simulated=False, client=client, max_samples=100,
                                max_bytes=1 << 20, backoff=Backoff(base_s=10, max_s=10),
                                clock=lambda: now[0])
            assert await adoption.step() == (Step.IDLE, 0.0)  # refused connection: later
            assert adoption.identity is None and not adoption.finished
            app = await serving(store, port)
            try:
                assert await adoption.step() == (Step.IDLE, 0.0)  # not due yet: not asked
                assert adoption.identity is None
                now[0] = 11.0
                step, _ = await adoption.step()
                assert step is Step.SENT and adoption.identity == (key.info.id, "research")
                assert await adoption.step() == (Step.IDLE, 0.0)
            finally:
                adoption.close()
                await app.stop()
        assert {uuid for uuid, _ in stored(store, "research")} == {"GPU-old"}
    assert not old.exists()


# ---------------------------------------------------------------- a running agent


async def wait_until(condition: Any, *, what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` every 50 ms; fail (not hang) after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_a_running_agent_started_in_an_outage_sends_the_old_spool_when_the_server_is_back(
        tmp_path: Path) -> None:
    spool, log = tmp_path / "spool", tmp_path / "agent.log"
    with MetricsStore.open(tmp_path / "m.duckdb") as store:
        created = store.create_key("agent", ["ingest"], "research")
        app = await serving(store)
        url, port = app.url, app.http.address[1]
        assert (await once(url, created.key, spool, tmp_path)).returncode == 0
        await app.stop()
        assert (await once(url, created.key, spool, tmp_path)).returncode == 1
        old_dir = destination_dir(spool, url, created.key, simulated=False)
        waiting = spooled(old_dir)
        new = store.rotate_key(created.info.id).key  # `gpufleet keys rotate`, the server away
        env = {"GPUFLEET_KEY": new, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
               "PYTHONPATH": one_gpu_pythonpath(tmp_path), "GPUFLEET_AGENT__RETRY_BASE_S": "0.1",
               "GPUFLEET_AGENT__RETRY_MAX_S": "0.3",
               **{k: v for k, v in os.environ.items() if k.startswith("XDG_")}}
        with open(log, "wb") as stderr:
            agent = subprocess.Popen(
                [sys.executable, "-m", "gpufleet.server.cli", "agent", "--server", url,
                 "--interval", "1", "--spool-dir", str(spool)],
                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            await wait_until(lambda: "they stay there until the server confirms" in log.read_text(),
                             what="the agent naming the old spool while the server is away")
            assert pending_samples(old_dir) == len(waiting)
            app = await serving(store, port)
            await wait_until(lambda: not old_dir.exists(), what="the old spool sent")
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(timeout=20) == 0
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
            await app.stop()
        assert set(waiting) <= stored(store, "research")
    text = log.read_text()
    assert "spooled under an earlier secret of this key" in text
    assert new not in text and created.key not in text

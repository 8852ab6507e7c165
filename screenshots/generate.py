"""Regenerate screenshots/*.svg: every console screen over a simulated fleet with a frozen clock.

Usage:  .venv/bin/python screenshots/generate.py [--size 120x40]

Real servers on 127.0.0.1 ephemeral ports, in this process: four simulated
nodes (operator API) and a local server over a temporary DuckDB file holding
the sample month, which the chargeback and hosts screens read.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from textual.pilot import Pilot

from gpufleet.console.app import GpuFleetApp
from gpufleet.console.config import NodeTarget, Secret
from gpufleet.console.datasource import ClientDataSource
from gpufleet.console.screens.purge import PurgeModal
from gpufleet.console.widgets.fleet_table import FleetTable
from gpufleet.server.auth import StaticKeyResolver
from gpufleet.server.client import GpuFleetClient
from gpufleet.server.config import ConsoleSettings, Settings
from gpufleet.server.embedded import EmbeddedServer
from gpufleet.server.gpu.simulated import SimulatedBackend, simulated_backends
from gpufleet.server.sample import load_sample_month
from gpufleet.server.schemas import Heartbeat
from gpufleet.server.store import MetricsStore

FROZEN = datetime(2026, 3, 11, 15, 0, tzinfo=UTC)
TOKEN = "screenshots-operator-token"
OUT = Path(__file__).resolve().parent
# Round trips as a LAN shows them, fixed so the pictures do not change from run to run
# (the tests' snapshots mask theirs as "·· ms", a placeholder nobody should see in the README).
SHOWN_RTT_MS = {"ws-gpu-01": 2.0, "dgx-a100-01": 4.0, "dgx-h100-01": 3.0, "inf-l40s-01": 6.0}


class Servers:
    """The fleet's nodes and the local chargeback/hosts server; ``close()`` stops them all."""

    def __init__(self, directory: Path) -> None:
        settings = Settings().with_overrides({"sampler.enabled": False, "server.purge_settle_s": 1.0})
        self.embedded: list[EmbeddedServer] = []
        self.targets: list[NodeTarget] = []
        gpu_counts: dict[str, int] = {}
        for backend in simulated_backends(4, clock=lambda: FROZEN):
            server = EmbeddedServer(settings, backend=backend, key_resolver=StaticKeyResolver.operator(TOKEN))
            self.targets.append(NodeTarget(backend.node_name, server.start(), Secret(TOKEN)))
            self.embedded.append(server)
            gpu_counts[backend.node_name] = len(backend.snapshot().gpus)
        self.store = MetricsStore.open(directory / "screens.duckdb")
        self.key = self.store.create_key("screenshots", ["operator", "ingest", "read"], "default").key
        # The month ends yesterday, so the heartbeats sent below are the latest ones.
        moments = {"ws-gpu-01": 1, "dgx-a100-01": 2, "dgx-h100-01": 14, "inf-l40s-01": 240}
        # the hosts given heartbeats below are not the sample data's silent ones
        load_sample_month(self.store, "default", end=(FROZEN - timedelta(days=1)).date(), now=FROZEN,
                          live_hosts=list(moments))
        local = EmbeddedServer(settings, backend=SimulatedBackend(clock=lambda: FROZEN), store=self.store)
        self.local_url = local.start()
        self.embedded.append(local)
        assert local.app is not None
        now = FROZEN
        local.app.context.now = lambda: now  # heartbeats land when the script says
        with GpuFleetClient(self.local_url, api_key=self.key) as client:
            for host, minutes in sorted(moments.items(), key=lambda kv: -kv[1]):
                now = FROZEN - timedelta(minutes=minutes)
                local.app.context.now = lambda at=now: at
                client.heartbeat(Heartbeat(agent_version="0.1.0", gpu_count=gpu_counts[host], hostname=host))
        local.app.context.now = lambda: FROZEN

    def close(self) -> None:
        for server in self.embedded:
            server.stop()
        self.store.close()


async def until(pilot: Pilot[None], predicate: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"screenshots: timed out waiting for {what}")
        await pilot.pause(0.02)


async def shoot(servers: Servers, size: tuple[int, int]) -> list[Path]:
    source = ClientDataSource.connect(servers.local_url, servers.key)
    app = GpuFleetApp(ConsoleSettings(), servers.targets, data_source=source, clock=lambda: FROZEN,
                      refresh_s=3600)
    apply_status = app.fleet.apply_status
    app.fleet.apply_status = lambda name, status, rtt_ms, at: apply_status(  # type: ignore[method-assign]
        name, status, SHOWN_RTT_MS.get(name, rtt_ms), at)
    written: list[Path] = []

    def save(name: str) -> None:
        written.append(Path(app.save_screenshot(f"{name}.svg", path=str(OUT))))

    async with app.run_test(size=size) as pilot:
        await until(pilot, lambda: all(n.reachable for n in app.fleet.nodes.values())
                    and getattr(app.screen, "_drawn_version", -1) == app.fleet.version, "the fleet")
        await pilot.pause()
        save("fleet")
        await pilot.press("v", "s", "s", "s", "home")  # flat, hottest first
        await pilot.pause()
        save("fleet-flat")
        await pilot.press("v", "o")
        await pilot.pause()
        save("processes")
        await pilot.press("o")
        await pilot.pause()
        app.screen.query_one(FleetTable).move_to(("dgx-h100-01", 6))
        await pilot.press("enter")
        await pilot.pause()
        save("gpu-detail")
        await pilot.press("escape")
        app.screen.query_one(FleetTable).move_to(("dgx-h100-01", None))
        await pilot.press("p")
        await until(pilot, lambda: isinstance(app.screen, PurgeModal), "the purge modal")
        modal = app.screen
        assert isinstance(modal, PurgeModal)
        save("purge-confirm")
        await pilot.click("#purge-go")
        await until(pilot, lambda: modal.result is not None or modal.error is not None, "the purge")
        await pilot.pause()
        save("purge-result")
        await pilot.press("escape")
        await pilot.press("c")
        await until(pilot, lambda: getattr(app.screen, "report", None) is not None, "the chargeback report")
        await pilot.pause()
        save("chargeback")
        await pilot.press("down")  # inference: its own GPUs and a share of the L40S it shares
        await pilot.press("enter")
        await pilot.pause(0.3)
        save("chargeback-team")
        await pilot.press("escape")
        await pilot.press("h")
        await until(pilot, lambda: getattr(app.screen, "response", None) is not None, "the hosts")
        await pilot.pause()
        save("hosts")
        await pilot.press("l")
        await pilot.pause(0.3)
        save("event-log")
        await pilot.press("f", "question_mark")
        await pilot.pause(0.3)
        save("help")
        await pilot.press("escape", "t")
        await pilot.pause(0.3)
        save("fleet-light")
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="120x40", help="terminal size, COLSxROWS")
    args = parser.parse_args()
    cols, rows = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        servers = Servers(Path(tmp))
        try:
            written = asyncio.run(shoot(servers, (cols, rows)))
        finally:
            servers.close()
    for path in written:
        print(path.relative_to(OUT.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())

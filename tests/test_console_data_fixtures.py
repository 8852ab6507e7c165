"""Shared pieces of the console data-screen tests: a tiny host app and the data behind it.

The screens are mounted in :class:`DataScreensApp`, which builds a
``ClientDataSource`` inside its own loop (snapshot tests run the app in a fresh
loop each time) against a real server started by the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from textual.app import App
from textual.binding import Binding
from textual.pilot import Pilot
from textual.screen import Screen

from gpufleet.console.datasource import ClientDataSource, DataSource

FROZEN_TODAY = date(2026, 3, 17)
FROZEN_NOW = datetime(2026, 3, 17, 12, 0, tzinfo=UTC)

ScreenFactory = Callable[[DataSource], Screen[None]]


class DataScreensApp(App[None]):
    """Hosts one data screen over a real server, as the console app would."""

    BINDINGS = [
        Binding("q", "quit", "Quit", id="app.quit"),
        Binding("question_mark", "help", "Help", id="app.help"),
    ]

    def __init__(self, url: str, key: str | None, make_screen: ScreenFactory) -> None:
        super().__init__()
        self._url = url
        self._key = key
        self._make_screen = make_screen
        self.source: ClientDataSource | None = None

    def on_mount(self) -> None:
        self.source = ClientDataSource.connect(self._url, self._key)
        self.push_screen(self._make_screen(self.source))

    async def on_unmount(self) -> None:
        if self.source is not None:
            await self.source.aclose()

    def action_help(self) -> None:
        from gpufleet.console.screens.chargeback import ChargebackScreen
        from gpufleet.console.screens.help import HelpScreen
        from gpufleet.console.screens.hosts import HostsScreen

        self.push_screen(HelpScreen([ChargebackScreen, HostsScreen]))


async def settle(pilot: Pilot[None]) -> None:
    """Wait until every worker has finished and its messages are handled."""
    for _ in range(3):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()


# --------------------------------------------------------------------------
# A real server over a real DuckDB store, with hand-made usage and heartbeats
# --------------------------------------------------------------------------

ACCOUNT = "default"
GPU_NAMES = {"H100": "NVIDIA H100 80GB HBM3", "A100": "NVIDIA A100-SXM4-80GB", "L4": "NVIDIA L4"}
# (team, model, arch, gpu count, start, minutes): one sample a minute per GPU.
USAGE = [
    ("ml-infra", "llama3-70b-finetune", "H100", 2, datetime(2026, 3, 10, 8, 0, tzinfo=UTC), 180),
    ("ml-infra", "mistral-7b-eval", "H100", 1, datetime(2026, 3, 11, 9, 0, tzinfo=UTC), 60),
    ("search", "bge-large", "A100", 1, datetime(2026, 3, 12, 10, 0, tzinfo=UTC), 120),
    ("vision", "yolo-v9", "L4", 1, datetime(2026, 2, 20, 14, 0, tzinfo=UTC), 60),
    ("search", "bge-reranker", "H100", 1, datetime(2026, 3, 11, 9, 0, tzinfo=UTC), 60),
]
# (team, model) -> the GPU it shares and its fraction: mistral-7b-eval's H100 hour is shared
# half and half with search's bge-reranker, one row per workload at every minute
SHARED = {("ml-infra", "mistral-7b-eval"): ("GPU-ml-infra-H100-0", 0.5),
          ("search", "bge-reranker"): ("GPU-ml-infra-H100-0", 0.5)}


def usage_samples() -> list[dict[str, object]]:
    from datetime import timedelta

    samples: list[dict[str, object]] = []
    for team, model, arch, gpus, start, minutes in USAGE:
        shared_uuid, fraction = SHARED.get((team, model), (None, None))
        for gpu in range(gpus):
            for minute in range(minutes):
                samples.append({
                    "timestamp": (start + timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "gpu_index": gpu,
                    "gpu_uuid": shared_uuid or f"GPU-{team}-{arch}-{gpu}",
                    "gpu_fraction": fraction,
                    "gpu_name": GPU_NAMES[arch],
                    "power_draw_w": 300.0,
                    "utilization_gpu_pct": 80.0 if minute % 10 else 2.0,
                    "utilization_memory_pct": 40.0,
                    "temperature_c": 60.0,
                    "memory_used_mb": 40000.0,
                    "energy_delta_j": 18000.0,
                    "team_id": team,
                    "model_tag": model,
                    "scheduler_source": "manual",
                })
    return samples


class SettableClock:
    """The server's clock: heartbeats are posted at chosen instants, then it stays at FROZEN_NOW."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class LiveServer:
    url: str
    key: str
    clock: SettableClock

    def now(self) -> datetime:
        return FROZEN_NOW

    def csv(self, from_: date, to: date) -> str:
        from gpufleet.server.client import GpuFleetClient

        with GpuFleetClient(self.url, api_key=self.key) as client:
            return client.chargeback_csv(from_, to)


# hostname -> minutes before FROZEN_NOW of its last heartbeat (interval 5 min)
HEARTBEATS = {"gpu-node-01": 1, "gpu-node-02": 12, "gpu-node-03": 180}


def start_live_server(directory: Path, *, simulate: bool = False) -> tuple[LiveServer, Callable[[], None]]:
    """A real server on 127.0.0.1:0 over a DuckDB file in ``directory``, loaded through its API.

    ``simulate``: a server over simulated data (as the console's demo store), which takes
    what the demo nodes send marked simulated.
    """
    from datetime import timedelta

    from gpufleet.server.client import GpuFleetClient
    from gpufleet.server.config import Settings
    from gpufleet.server.embedded import EmbeddedServer
    from gpufleet.server.gpu.simulated import SimulatedBackend
    from gpufleet.server.schemas import Heartbeat
    from gpufleet.server.store import MetricsStore

    settings = Settings().with_overrides({
        "server.host": "127.0.0.1", "server.port": 0, "server.db_path": str(directory / "t.duckdb"),
        "server.heartbeat_interval_s": 300, "sampler.enabled": False, "server.simulate": simulate})
    store = MetricsStore.open(settings.server.resolved_db_path())
    key = store.create_key("console-test", ["operator", "ingest", "read"], ACCOUNT).key
    clock = SettableClock(FROZEN_NOW)
    server = EmbeddedServer(settings, backend=SimulatedBackend(clock=clock), store=store)
    url = server.start()
    assert server.app is not None
    server.app.context.now = clock  # the API's injectable clock: heartbeats land when we say
    with GpuFleetClient(url, api_key=key, simulated=simulate) as client:  # simulated: sent marked
        result = client.ingest(usage_samples())
        assert result.inserted == len(usage_samples())
        for hostname, minutes in sorted(HEARTBEATS.items(), key=lambda kv: -kv[1]):
            clock.now = FROZEN_NOW - timedelta(minutes=minutes)
            client.heartbeat(Heartbeat(agent_version="0.1.0", gpu_count=8, hostname=hostname))
    clock.now = FROZEN_NOW

    def stop() -> None:
        server.stop()
        store.close()

    return LiveServer(url, key, clock), stop


def serve_module(tmp_path_factory: pytest.TempPathFactory, *,
                 simulate: bool = False) -> Iterator[LiveServer]:
    """The body of each test module's module-scoped ``live_server`` fixture."""
    server, stop = start_live_server(tmp_path_factory.mktemp("console-data"), simulate=simulate)
    try:
        yield server
    finally:
        stop()

"""Shared parts of the live-console tests: real simulated nodes on 127.0.0.1:0 and a console over them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from textual.pilot import Pilot

from gpufleet.console.app import GpuFleetApp
from gpufleet.console.config import NodeTarget, Secret
from gpufleet.server.app import ServerApp
from gpufleet.server.auth import StaticKeyResolver
from gpufleet.server.config import ConsoleSettings, RuntimeSettings, Settings
from gpufleet.server.embedded import EmbeddedServer
from gpufleet.server.gpu.simulated import SimulatedBackend, simulated_backends

# Wednesday 15:00 UTC: on dgx-h100-01 llama3-8b-sft sits idle on GPUs 0-5 while
# qwen-3.5-27b serves on GPUs 6-7, so a purge without force has something to skip.
FROZEN = datetime(2026, 3, 11, 15, 0, tzinfo=UTC)
TOKEN = "console-live-test-operator-token"
WAIT_S = 15.0  # generous bound for a 2-core machine shared by many test runs


class Clock:
    """The console's clock in tests: frozen, moved only by ``advance``."""

    def __init__(self, now: datetime = FROZEN) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def node_settings(runtimes: list[RuntimeSettings] | None = None) -> Settings:
    return Settings().with_overrides({
        "sampler.enabled": False,
        "server.purge_settle_s": 1.0,
        "runtimes": [r.model_dump() for r in runtimes or []],
    })


@dataclass
class LiveNode:
    """One simulated node served by a real ServerApp in the test's event loop."""

    name: str
    backend: SimulatedBackend
    settings: Settings
    app: ServerApp | None = None
    port: int = 0
    history: list[str] = field(default_factory=list)

    async def start(self) -> None:
        self.app = ServerApp(self.settings, backend=self.backend, store=None,
                             key_resolver=StaticKeyResolver.operator(TOKEN))
        _, self.port = await self.app.start("127.0.0.1", self.port)

    async def stop(self) -> None:
        if self.app is not None:
            await self.app.stop()
            self.app = None

    @property
    def target(self) -> NodeTarget:
        return NodeTarget(self.name, f"http://127.0.0.1:{self.port}", Secret(TOKEN))


async def start_nodes(count: int, settings: Settings | None = None) -> list[LiveNode]:
    nodes = []
    for backend in simulated_backends(count, clock=lambda: FROZEN):
        node = LiveNode(backend.node_name, backend, settings or node_settings())
        await node.start()
        nodes.append(node)
    return nodes


def console_app(targets: list[NodeTarget], *, refresh_s: float = 0.5, readonly: bool = False,
                clock: Callable[[], datetime] | None = None, request_timeout_s: float = 2.0,
                **kwargs: object) -> GpuFleetApp:
    settings = ConsoleSettings(refresh_s=max(0.5, min(refresh_s, 3600)), request_timeout_s=request_timeout_s)
    return GpuFleetApp(settings, targets, clock=clock or Clock(), readonly=readonly,
                       refresh_s=refresh_s, mask_rtt=True, **kwargs)  # type: ignore[arg-type]


async def wait_for(pilot: Pilot[object], predicate: Callable[[], bool], what: str,
                   timeout_s: float = WAIT_S) -> None:
    """Let the app run until ``predicate()`` holds; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


def all_polled(app: GpuFleetApp, polls: int = 1) -> bool:
    """Every node answered at least ``polls`` times and the screen shows it."""
    nodes = app.fleet.nodes.values()
    return (all(n.reachable and min((len(h) for h in n.histories.values()), default=0) >= polls
                for n in nodes)
            and getattr(app.screen, "_drawn_version", None) == app.fleet.version)


class EmbeddedFleet:
    """Simulated nodes in background threads, for snapshot tests (snap_compare runs its own loop)."""

    def __init__(self, count: int, runtimes: list[RuntimeSettings] | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.settings = node_settings(runtimes)
        self.servers: dict[str, EmbeddedServer] = {}
        backends = simulated_backends(count, clock=clock or (lambda: FROZEN))
        self.backends = {b.node_name: b for b in backends}
        self.targets: list[NodeTarget] = []
        for name, backend in self.backends.items():
            server = EmbeddedServer(self.settings, backend=backend,
                                    key_resolver=StaticKeyResolver.operator(TOKEN))
            self.targets.append(NodeTarget(name, server.start(), Secret(TOKEN)))
            self.servers[name] = server

    def stop_node(self, name: str) -> None:
        self.servers[name].stop()

    def reset(self) -> None:
        for backend in self.backends.values():
            backend.reload_all()

    def close(self) -> None:
        for server in self.servers.values():
            server.stop()

"""Heartbeats and samples for the simulated demo nodes, sent to the console's embedded server.

The demo nodes have no agents, so nothing would tell the local server they are
alive: after two heartbeat intervals the Hosts screen would call them stale,
then offline, while the fleet screen shows them up, and their "last sample"
would stay at the time the sample data was loaded. :class:`DemoHeartbeats`
plays their agents' part over the server's real heartbeat and ingest APIs,
from a daemon thread, until ``stop()``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpufleet.server.agent.sampler import Sampler
    from gpufleet.server.client import GpuFleetClient
    from gpufleet.server.gpu.base import GpuBackend

log = logging.getLogger("gpufleet.console.demo")

MIN_INTERVAL_S = 1.0
DEMO_AGENT_VERSION = "simulated"


@dataclass(frozen=True, slots=True)
class DemoHost:
    """One demo node as its agent would announce it; with a backend, its GPUs are sampled too."""

    hostname: str
    gpu_count: int
    backend: GpuBackend | None = field(default=None, compare=False, repr=False)


ClientFactory = Callable[[], "GpuFleetClient"]


def beat_interval(heartbeat_interval_s: float) -> float:
    """Twice per server interval: a missed beat never makes a demo node look stale."""
    return max(MIN_INTERVAL_S, heartbeat_interval_s / 2)


class DemoHeartbeats:
    """Posts one heartbeat per demo host, and one sample per GPU of hosts with a backend, every round."""

    def __init__(self, url: str, key: str | None, hosts: list[DemoHost], *, interval_s: float,
                 client_factory: ClientFactory | None = None) -> None:
        from gpufleet.server.agent.sampler import Sampler

        self.hosts = list(hosts)
        self.interval_s = max(MIN_INTERVAL_S, interval_s)
        self.beats = 0  # heartbeats the server accepted (tests read it)
        self.samples = 0  # samples the server stored
        # The agent's own sampler: the same fields, ranges and whole-second UTC timestamps.
        self._samplers: dict[str, Sampler] = {
            host.hostname: Sampler(host.backend) for host in self.hosts if host.backend is not None}
        self._client_factory = client_factory or _client_for(url, key)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat_once(self) -> int:
        """Send every host's heartbeat and its GPUs' samples once; returns the heartbeats accepted."""
        from gpufleet.server.client import GpuFleetError
        from gpufleet.server.schemas import Heartbeat

        accepted = 0
        with self._client_factory() as client:
            for host in self.hosts:
                try:
                    client.heartbeat(Heartbeat(agent_version=DEMO_AGENT_VERSION,
                                               gpu_count=host.gpu_count, hostname=host.hostname))
                except GpuFleetError as exc:
                    # The server may be stopping; the next round tries again.
                    log.warning("demo heartbeat for %s failed: %s", host.hostname, exc.message)
                    continue
                accepted += 1
            self._post_samples(client)
        self.beats += accepted
        return accepted

    def _post_samples(self, client: GpuFleetClient) -> None:
        """All demo GPUs' readings in one ingest request: one request per round, whatever the fleet size."""
        from gpufleet.server.client import GpuFleetError

        batch: list[dict[str, Any]] = []
        for hostname, sampler in self._samplers.items():
            for sample in sampler.sample():
                sample["hostname"] = hostname  # the hosts listing's "last sample" goes by it
                batch.append(sample)
        if not batch:
            return
        try:
            result = client.ingest(batch)
        except GpuFleetError as exc:
            log.warning("demo samples (%d) were not stored: %s", len(batch), exc.message)
            return
        self.samples += result.inserted

    def start(self) -> None:
        if self._thread is not None or not self.hosts:
            return
        self._thread = threading.Thread(target=self._run, name="gpufleet-demo-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop beating (idempotent); waits for a round in flight."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat_once()
            except Exception:  # never let the thread die: the hosts view would go stale again
                log.exception("demo heartbeat round failed")
            self._stop.wait(self.interval_s)


def _client_for(url: str, key: str | None) -> ClientFactory:
    def make() -> GpuFleetClient:
        from gpufleet.server.client import GpuFleetClient

        # marked simulated: only a server over a simulated store takes them (409 elsewhere)
        return GpuFleetClient(url, api_key=key, timeout=5.0, simulated=True)

    return make

"""Test support: a real ServerApp over a real store, served from a thread of its own.

For synchronous drivers (hypothesis, schemathesis) that cannot run inside the test's
event loop: the server gets its own loop in a background thread; the test talks HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpufleet.server.app import ServerApp
from gpufleet.server.gpu.simulated import SimulatedBackend
from gpufleet.server.store import MetricsStore
from tests.api_server import KEY_ROLES, api_settings

# Generated traffic must meet the handlers, not the buckets.
UNLIMITED = {f"rate_limits.{name}": {"requests": 1_000_000, "per_s": 1}
             for name in ("ingest", "chargeback", "heartbeat", "hosts", "failed_auth")}


@dataclass
class LiveServer:
    url: str
    store: MetricsStore
    keys: dict[str, str] = field(default_factory=dict)

    def auth(self, role: str = "operator") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}


@contextlib.contextmanager
def threaded_server(db: Path, **overrides: Any) -> Iterator[LiveServer]:
    """A server on 127.0.0.1:0 with one key per role of ``KEY_ROLES`` (and a spare ``rotator``)."""
    settings = api_settings(**{"server.purge_settle_s": 0.05, **UNLIMITED, **overrides})
    store = MetricsStore.open(db)
    keys = {role: store.create_key(f"{role}-key", scopes, account).key
            for role, (scopes, account) in KEY_ROLES.items()}
    keys["rotator"] = store.create_key("rotator", ["read"], "default").key
    loop = asyncio.new_event_loop()
    app = ServerApp(settings, backend=SimulatedBackend(), store=store)
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(app.start("127.0.0.1", 0))
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="threaded-server", daemon=True)
    thread.start()
    try:
        if not started.wait(30):
            raise AssertionError("the threaded server did not start")
        yield LiveServer(app.url, store, keys)
    finally:
        asyncio.run_coroutine_threadsafe(app.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
        store.close()

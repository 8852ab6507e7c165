"""EmbeddedServer: a ServerApp on its own event loop in a background thread (for the console)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from gpufleet.server.auth import KeyResolver
from gpufleet.server.config import Settings
from gpufleet.server.gpu.base import GpuBackend

if TYPE_CHECKING:
    from gpufleet.server.admin import AdminChannel
    from gpufleet.server.app import ServerApp
    from gpufleet.server.store import MetricsStore

log = logging.getLogger("gpufleet.server")

START_TIMEOUT_S = 30.0


class EmbeddedServer:
    """``start()`` returns the base URL once the server listens; ``stop()`` shuts it down.

    With ``db_path`` (and no ``store``) the store is opened here and closed on stop; a
    ``store`` passed in stays open. Without ``backend`` the settings choose one
    (NVML, or the simulated fleet when ``server.simulate`` or no GPU is found).
    ``clock`` stamps requests (heartbeats, ingest receive times) instead of the wall clock.
    """

    def __init__(self, settings: Settings, *, backend: GpuBackend | None = None,
                 store: MetricsStore | None = None, db_path: Path | None = None,
                 key_resolver: KeyResolver | None = None,
                 clock: Callable[[], datetime] | None = None,
                 admin_holder: str | None = None) -> None:
        """``admin_holder`` (e.g. ``console``): serve the store's admin channel, as ``serve`` does."""
        self.settings = settings
        self._admin_holder = admin_holder
        self.admin: AdminChannel | None = None
        self._clock = clock
        self._backend = backend
        self._store = store
        self._db_path = db_path
        self._resolver = key_resolver
        self._owns_store = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self.app: ServerApp | None = None
        self.url: str | None = None

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        if self._thread is not None:
            raise RuntimeError("already started")
        ready: Future[str] = Future()
        self._thread = threading.Thread(target=self._run, args=(host, port, ready),
                                        name="gpufleet-embedded", daemon=True)
        self._thread.start()
        self.url = ready.result(timeout=START_TIMEOUT_S)
        return self.url

    def stop(self, timeout_s: float = 30.0) -> None:
        if self._thread is None or self._loop is None or self._stopped is None:
            return
        self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(timeout_s)
        self._thread = None

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, host: str, port: int, ready: Future[str]) -> None:
        try:
            asyncio.run(self._main(host, port, ready))
        except BaseException as exc:  # reported to start() instead of dying silently
            if not ready.done():
                ready.set_exception(exc)
            else:
                log.exception("embedded server failed")

    async def _main(self, host: str, port: int, ready: Future[str]) -> None:
        from gpufleet.server.app import ServerApp

        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        backend = self._backend or _open_backend(self.settings)
        store = self._store
        if store is None and self._db_path is not None:
            from gpufleet.server.store import MetricsStore

            store = await asyncio.to_thread(MetricsStore.open, self._db_path)
            self._owns_store = True
        try:
            self.app = ServerApp(self.settings, backend=backend, store=store,
                                 key_resolver=self._resolver,
                                 **({"clock": self._clock} if self._clock is not None else {}))
            await self.app.start(host, port)
            if self._admin_holder is not None and store is not None:
                from gpufleet.server.admin import start_admin_channel

                self.admin = await start_admin_channel(self.app, store, store.path,
                                                       self._admin_holder)
            ready.set_result(self.app.url)
            await self._stopped.wait()
            if self.admin is not None:
                await self.admin.stop()
            await self.app.stop()
        finally:
            if self._owns_store and store is not None:
                await asyncio.to_thread(store.close)
            if self._backend is None:
                backend.close()


def _open_backend(settings: Settings) -> GpuBackend:
    from gpufleet.server.gpu.select import open_backend

    return open_backend(simulate=settings.server.simulate)

"""Run a started HttpServer until SIGTERM/SIGINT (or an event), then shut it down gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
from collections.abc import Awaitable, Callable

from gpufleet.server.http.server import HttpServer

log = logging.getLogger("gpufleet.http")

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def run_until_signalled(server: HttpServer,
                              on_stop: Callable[[], Awaitable[None] | None] | None = None,
                              *, stop: asyncio.Event | None = None) -> int:
    """Wait for SIGTERM/SIGINT (or ``stop`` being set), shut down, run ``on_stop``; return 0.

    ``server.shutdown()`` stops accepting and lets in-flight requests finish within
    ``limits.shutdown_grace_s``; ``on_stop`` then flushes and closes what the server
    used (the store, say). Signal handlers are removed again before returning.
    """
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    installed = []
    for signum in _SIGNALS:
        try:
            loop.add_signal_handler(signum, _on_signal, stop, signum)
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):
            log.debug("Cannot install a handler for %s here", signum.name)
    try:
        await stop.wait()
        log.info("Shutting down")
        await server.shutdown()
        if on_stop is not None:
            result = on_stop()
            if inspect.isawaitable(result):
                await result
    finally:
        for signum in installed:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
    log.info("Stopped")
    return 0


def _on_signal(stop: asyncio.Event, signum: signal.Signals) -> None:
    log.info("Received %s", signum.name)
    stop.set()


# The name INTERFACES.md uses.
serve_until_signalled = run_until_signalled

"""One polling loop per node: concurrent, each with its own timeout, never overlapping itself.

Theory: every node gets its own task, so a dead node only ever costs its own
task a timeout. A loop polls, posts the outcome as a message, then waits the
rest of the refresh interval measured from when the poll *started* (at least a
little, so a slow node is not hammered): the next poll is always scheduled
after the last one finished. The loop never touches a widget.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

import httpx
from pydantic import ValidationError
from textual.message import Message

from gpufleet.console.config import NodeTarget
from gpufleet.console.messages import NodeFailed, NodePolled
from gpufleet.console.transport import KeepAliveTransport
from gpufleet.server.client import (
    AsyncGpuFleetClient,
    ConnectionFailed,
    Forbidden,
    GpuFleetError,
    RequestTimeout,
    Unauthorized,
)

log = logging.getLogger("gpufleet.console.poller")

ClientFactory = Callable[[NodeTarget, float], AsyncGpuFleetClient]
MIN_PAUSE_FRACTION = 0.25  # after a slow poll, still wait this share of the interval


def default_client_factory(target: NodeTarget, timeout_s: float) -> AsyncGpuFleetClient:
    return AsyncGpuFleetClient(target.url, api_key=target.api_key, timeout=timeout_s)


def skip_missing_sniffio() -> None:
    """Make httpcore's per-request ``import sniffio`` fail at once when sniffio is not installed.

    httpcore imports sniffio inside every lock it makes (several per request); a
    failed import is not cached, so each one searches sys.path again: a fifth of
    the console's HTTP CPU at 64 nodes. A ``None`` module entry fails the same
    way (httpcore then assumes asyncio, as it does without sniffio) but at once.
    """
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


class SharedTransportFactory:
    """Node clients that share one TLS context; each keeps its own keep-alive connections.

    A TLS context per client costs tens of milliseconds and about a megabyte, so
    hundreds of nodes each building one slow start-up and bloat memory. One pool
    for every node was tried and costs CPU instead: its bookkeeping grows with
    the number of connections on every request. Each client's transport is the
    console's own (``console.transport``): httpcore's pool cost a third more CPU a poll.
    """

    def __init__(self) -> None:
        skip_missing_sniffio()
        self._ssl = httpx.create_ssl_context()

    def __call__(self, target: NodeTarget, timeout_s: float) -> AsyncGpuFleetClient:
        transport = KeepAliveTransport(self._ssl)
        return AsyncGpuFleetClient(target.url, api_key=target.api_key, timeout=timeout_s,
                                   transport=transport)


def describe_error(exc: BaseException, *, timeout_s: float | None = None) -> str:
    """A short, stable, secret-free line for a failed request (no URL, no token)."""
    if isinstance(exc, RequestTimeout | asyncio.TimeoutError | TimeoutError):
        return f"no answer within {timeout_s:g} s" if timeout_s else "timed out"
    if isinstance(exc, ConnectionFailed):
        return "connection failed"
    if isinstance(exc, GpuFleetError):
        return f"HTTP {exc.status}: {exc.message}" if exc.status else exc.message
    if isinstance(exc, ValidationError):
        return "unexpected response body"
    return type(exc).__name__


async def poll_node(
    target: NodeTarget,
    client: AsyncGpuFleetClient,
    *,
    interval_s: float,
    timeout_s: float,
    post: Callable[[Message], object],
    clock: Callable[[], datetime],
    phase_s: float = 0.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Poll ``target`` forever, posting NodePolled / NodeFailed; cancelled by its owner.

    The first poll is immediate; ``phase_s`` then delays the second, so nodes
    given phases spread over the interval answer a few at a time instead of
    all at once (a burst of hundreds of answers delays a key press behind it).
    """
    first = True
    while True:
        started = time.perf_counter()
        try:
            # asyncio.timeout, not wait_for: wait_for wraps every poll in a task of its own.
            async with asyncio.timeout(timeout_s):
                status = await client.get_gpu_status()
        except (GpuFleetError, ValidationError, TimeoutError) as exc:
            message = describe_error(exc, timeout_s=timeout_s)
            log.debug("node %s: %s", target.name, message)
            status = exc.status if isinstance(exc, GpuFleetError) else None
            post(NodeFailed(target.name, message, clock(),
                            auth=isinstance(exc, Unauthorized | Forbidden), status=status))
        else:
            rtt_ms = (time.perf_counter() - started) * 1000.0
            post(NodePolled(target.name, status, rtt_ms, clock()))
        elapsed = time.perf_counter() - started
        pause = max(interval_s - elapsed, interval_s * MIN_PAUSE_FRACTION)
        if first:
            pause, first = pause + phase_s, False
        await sleep(pause)

"""One polling loop per node: concurrent, each with its own timeout, never overlapping itself.

Theory: every node gets its own task, so a dead node only ever costs its own
task a timeout. A loop polls, posts the outcome as a message, then waits the
rest of the refresh interval measured from when the poll *started* (at least a
little, so a slow node is not hammered): the next poll is always scheduled
after the last one finished. The loop never touches a widget.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime

import httpx
from pydantic import ValidationError
from textual.message import Message

from console.config import NodeTarget
from console.messages import NodeFailed, NodePolled
from server.client import AsyncGpuFleetClient, ConnectionFailed, GpuFleetError, RequestTimeout

log = logging.getLogger("gpufleet.console.poller")

ClientFactory = Callable[[NodeTarget, float], AsyncGpuFleetClient]
MIN_PAUSE_FRACTION = 0.25  # after a slow poll, still wait this share of the interval


def default_client_factory(target: NodeTarget, timeout_s: float) -> AsyncGpuFleetClient:
    return AsyncGpuFleetClient(target.url, api_key=target.api_key, timeout=timeout_s)


class SharedTransportFactory:
    """Node clients that share one TLS context; each keeps its own small connection pool.

    A TLS context per client costs tens of milliseconds and about a megabyte, so
    hundreds of nodes each building one slow start-up and bloat memory. One pool
    for every node was tried and costs CPU instead: its bookkeeping grows with
    the number of connections on every request.
    """

    def __init__(self) -> None:
        self._ssl = httpx.create_ssl_context()

    def __call__(self, target: NodeTarget, timeout_s: float) -> AsyncGpuFleetClient:
        transport = httpx.AsyncHTTPTransport(verify=self._ssl, limits=httpx.Limits(max_connections=2))
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
) -> None:
    """Poll ``target`` forever, posting NodePolled / NodeFailed; cancelled by its owner."""
    while True:
        started = time.perf_counter()
        try:
            status = await asyncio.wait_for(client.get_gpu_status(), timeout_s)
        except (GpuFleetError, ValidationError, TimeoutError) as exc:
            message = describe_error(exc, timeout_s=timeout_s)
            log.debug("node %s: %s", target.name, message)
            post(NodeFailed(target.name, message, clock()))
        else:
            rtt_ms = (time.perf_counter() - started) * 1000.0
            post(NodePolled(target.name, status, rtt_ms, clock()))
        elapsed = time.perf_counter() - started
        await asyncio.sleep(max(interval_s - elapsed, interval_s * MIN_PAUSE_FRACTION))

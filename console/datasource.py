"""The data the chargeback and hosts screens read, behind one small async seam.

Screens depend on the :class:`DataSource` protocol only; :class:`ClientDataSource`
implements it over ``server.client.AsyncGpuFleetClient`` and turns every client
error into :class:`DataSourceError` with a message fit for the screen (never a
key, never a traceback).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import date
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from gpufleet.server.schemas import ChargebackReport, HostsResponse

if TYPE_CHECKING:
    from gpufleet.server.client import AsyncGpuFleetClient

log = logging.getLogger("gpufleet.console.data")


class DataSourceError(Exception):
    """A read failed; ``str(exc)`` is the text the screen shows."""


@runtime_checkable
class DataSource(Protocol):
    """What the chargeback and hosts screens need from a server."""

    async def chargeback_report(self, from_: date, to: date) -> ChargebackReport: ...

    async def chargeback_csv(self, from_: date, to: date) -> str: ...

    async def hosts(self) -> HostsResponse: ...


def describe_error(exc: BaseException) -> str:
    """One line for the screen: the server's own error text when it sent one."""
    from gpufleet.server import client

    if isinstance(exc, client.RequestTimeout):
        return "The server did not answer in time"
    if isinstance(exc, client.ConnectionFailed):
        return "Cannot reach the server"
    if isinstance(exc, client.RateLimited):
        wait = f" (retry in {exc.retry_after:.0f}s)" if exc.retry_after else ""
        return f"Rate limited{wait}"
    if isinstance(exc, client.GpuFleetError):
        status = f"HTTP {exc.status}: " if exc.status else ""
        return f"{status}{exc.message}"
    return f"Unexpected error: {type(exc).__name__}"


class ClientDataSource:
    """A :class:`DataSource` over one ``AsyncGpuFleetClient`` (which it may own)."""

    def __init__(self, client: AsyncGpuFleetClient, *, owns_client: bool = False,
                 ready: threading.Event | None = None) -> None:
        self._client = client
        self._owns_client = owns_client
        self._ready = ready  # set once the server's data is whole (the sample month loading behind)

    @classmethod
    def connect(cls, base_url: str, api_key: str | None, *, timeout: float = 5.0,
                ready: threading.Event | None = None) -> ClientDataSource:
        from gpufleet.server.client import AsyncGpuFleetClient

        return cls(AsyncGpuFleetClient(base_url, api_key=api_key, timeout=timeout), owns_client=True,
                   ready=ready)

    async def _wait_ready(self) -> None:
        """Screens show their loading state meanwhile, rather than a month half loaded."""
        if self._ready is not None and not self._ready.is_set():
            await asyncio.to_thread(self._ready.wait)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def chargeback_report(self, from_: date, to: date) -> ChargebackReport:
        await self._wait_ready()
        try:
            return await self._client.chargeback_report(from_, to)
        except Exception as exc:
            raise self._wrap(exc, "chargeback report") from exc

    async def chargeback_csv(self, from_: date, to: date) -> str:
        await self._wait_ready()
        try:
            return await self._client.chargeback_csv(from_, to)
        except Exception as exc:
            raise self._wrap(exc, "chargeback CSV") from exc

    async def hosts(self) -> HostsResponse:
        await self._wait_ready()
        try:
            return await self._client.hosts()
        except Exception as exc:
            raise self._wrap(exc, "hosts") from exc

    @staticmethod
    def _wrap(exc: Exception, what: str) -> DataSourceError:
        message = describe_error(exc)
        log.warning("reading %s failed: %s", what, message)
        return DataSourceError(message)

"""A route's own ``timeout_s`` replaces the server's ``handler_timeout_s`` for that route only."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from gpufleet.server.config import Limits
from gpufleet.server.http.router import Router
from gpufleet.server.http.server import HttpServer
from gpufleet.server.http.types import Request, Response


class Waiters:
    """Handlers that wait on events the test sets; never on the clock."""

    def __init__(self) -> None:
        self.long_started = asyncio.Event()
        self.release = asyncio.Event()

    async def long(self, request: Request) -> Response:
        self.long_started.set()
        await self.release.wait()
        return Response.json({"finished": True})

    async def forever(self, request: Request) -> Response:
        await asyncio.Event().wait()
        return Response.json({})


@contextlib.asynccontextmanager
async def serving(router: Router, limits: Limits) -> AsyncIterator[httpx.AsyncClient]:
    server = HttpServer(router, limits)
    await server.start("127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as client:
            yield client
    finally:
        await server.shutdown()


async def test_a_route_with_a_longer_deadline_outlives_the_server_default() -> None:
    waiters = Waiters()
    router = Router()
    router.post("/long", waiters.long, timeout_s=60.0)
    router.get("/default", waiters.forever)
    limits = Limits(handler_timeout_s=0.2, shutdown_grace_s=1.0, close_linger_s=0.1)
    async with serving(router, limits) as client:
        long = asyncio.ensure_future(client.post("/long"))
        await asyncio.wait_for(waiters.long_started.wait(), 10)
        # Started after /long, so once it is past the default deadline, /long is too.
        default = await client.get("/default")
        assert default.status_code == 504
        assert not long.done()
        waiters.release.set()
        response = await long
    assert response.status_code == 200
    assert response.json() == {"finished": True}


async def test_a_route_with_a_shorter_deadline_gets_504_first() -> None:
    waiters = Waiters()
    router = Router()
    router.get("/short", waiters.forever, timeout_s=0.1)
    async with serving(router, Limits(handler_timeout_s=300.0, shutdown_grace_s=1.0)) as client:
        response = await client.get("/short")
    assert response.status_code == 504
    assert "error" in response.json()


def test_route_records_its_timeout_and_refuses_a_nonsense_one() -> None:
    router = Router()
    route = router.post("/purge", Waiters().long, timeout_s=45.0)
    assert route.timeout_s == 45.0
    assert router.get("/plain", Waiters().forever).timeout_s is None
    with pytest.raises(ValueError, match="positive"):
        router.get("/zero", Waiters().forever, timeout_s=0)

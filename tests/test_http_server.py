"""The HTTP core end to end: a real server on 127.0.0.1:0 driven by httpx and raw sockets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import BaseModel

from gpufleet.server.config import Limits
from gpufleet.server.http.router import Router
from gpufleet.server.http.server import HttpServer
from gpufleet.server.http.signals import run_until_signalled
from gpufleet.server.http.types import Handler, HttpError, Request, Response

SECRET = "gf_live_s3cr3t_do_not_leak"
FAST = Limits(header_timeout_s=2.0, body_timeout_s=2.0, keepalive_timeout_s=5.0,
              handler_timeout_s=2.0, close_linger_s=0.5, shutdown_grace_s=2.0,
              max_header_bytes=4096, max_body_bytes=64 * 1024)


class Item(BaseModel):
    name: str
    count: int


class DemoApp:
    """Handlers whose slowness the test controls with events, never with sleeps."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    def router(self) -> Router:
        router = Router()
        router.get("/hello", self.hello, summary="Say hello")
        router.get("/items/{item_id}", self.item)
        router.post("/echo", self.echo)
        router.post("/items", self.create, request_model=Item, auth="operator")
        router.get("/boom", self.boom)
        router.get("/wait", self.wait)
        router.get("/header", self.header)
        return router

    async def header(self, request: Request) -> Response:
        value = request.query.get("value", "ok")
        return Response.text("csv", headers=[("Content-Disposition", value)])

    async def hello(self, request: Request) -> Response:
        return Response.json({"hello": "world", "query": request.query})

    async def item(self, request: Request) -> Response:
        return Response.json({"id": request.path_params["item_id"]})

    async def echo(self, request: Request) -> Response:
        return Response(body=request.body, content_type="application/octet-stream")

    async def create(self, request: Request) -> Response:
        item = Item.model_validate(request.json())
        return Response.json(item, status=201)

    async def boom(self, request: Request) -> Response:
        raise RuntimeError(f"database password is {SECRET}")

    async def wait(self, request: Request) -> Response:
        self.started.set()
        await self.release.wait()
        return Response.json({"waited": True})


@contextlib.asynccontextmanager
async def running_server(limits: Limits = FAST, app: DemoApp | None = None,
                         **kwargs: object) -> AsyncIterator[HttpServer]:
    server = HttpServer((app or DemoApp()).router(), limits, **kwargs)  # type: ignore[arg-type]
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.shutdown()


async def raw_exchange(server: HttpServer, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection and return everything read until the server closes."""
    assert server.address is not None
    reader, writer = await asyncio.open_connection(*server.address)
    try:
        writer.write(data)
        async with asyncio.timeout(timeout):
            return await reader.read(-1)
    finally:
        writer.close()


async def assert_still_serving(server: HttpServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get("/hello")
    assert response.status_code == 200


async def test_get_returns_json_with_standard_headers() -> None:
    async with running_server() as server, httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get("/hello", params={"x": "1"})
    assert response.status_code == 200
    assert response.json() == {"hello": "world", "query": {"x": "1"}}
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(response.content))
    assert response.headers["server"] == "gpufleet"
    assert response.headers["date"].endswith("GMT")


async def test_path_parameters_and_percent_decoding() -> None:
    async with running_server() as server, httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get("/items/gpu%20one")
    assert response.json() == {"id": "gpu one"}


async def test_unknown_path_is_404_and_wrong_method_is_405_with_allow() -> None:
    async with running_server() as server, httpx.AsyncClient(base_url=server.url) as client:
        missing = await client.get("/nope")
        wrong = await client.delete("/hello")
    assert missing.status_code == 404
    assert missing.json() == {"error": "Not found: /nope"}
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "GET, HEAD"
    assert wrong.json()["error"] == "Method not allowed: DELETE /hello"


async def test_head_is_answered_like_get_without_a_body() -> None:
    async with running_server() as server, httpx.AsyncClient(base_url=server.url) as client:
        get = await client.get("/hello")
        head = await client.head("/hello")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"]


async def test_handler_exception_is_500_without_details_and_server_keeps_serving(
        caplog: pytest.LogCaptureFixture) -> None:
    async with running_server() as server, httpx.AsyncClient(base_url=server.url) as client:
        with caplog.at_level(logging.ERROR, logger="gpufleet.http"):
            response = await client.get("/boom")
        again = await client.get("/hello")
    assert response.status_code == 500
    assert response.json() == {"error": "Internal server error"}
    assert SECRET not in response.text
    assert "RuntimeError" in caplog.text  # the traceback stays server-side
    assert again.status_code == 200


async def test_handler_past_its_deadline_is_504() -> None:
    limits = FAST.model_copy(update={"handler_timeout_s": 0.2})
    async with running_server(limits) as server, httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get("/wait")
        again = await client.get("/hello")
    assert response.status_code == 504
    assert "error" in response.json()
    assert again.status_code == 200


async def test_json_body_errors_map_to_400_and_415() -> None:
    async with running_server() as server, httpx.AsyncClient(base_url=server.url) as client:
        created = await client.post("/items", json={"name": "a100", "count": 2})
        invalid = await client.post("/items", json={"name": "a100", "count": "many"})
        malformed = await client.post("/items", content=b"{nope",
                                      headers={"content-type": "application/json"})
        not_json = await client.post("/items", content=b"name=a", headers={
            "content-type": "application/x-www-form-urlencoded"})
    assert created.status_code == 201
    assert created.json() == {"name": "a100", "count": 2}
    assert invalid.status_code == 400
    assert invalid.json()["error"].startswith("Invalid request: count:")
    assert "many" not in invalid.text  # input values are never echoed
    assert malformed.status_code == 400
    assert malformed.json()["error"].startswith("Malformed JSON body")
    assert not_json.status_code == 415


async def test_middleware_wraps_matched_routes_and_sets_the_key_name_for_the_access_log(
        caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    async def outer(request: Request, call_next: Handler) -> Response:
        seen.append(f"outer:{request.route.name if request.route else None}")
        response = await call_next(request)
        response.headers.append(("X-Outer", "1"))
        return response

    async def auth(request: Request, call_next: Handler) -> Response:
        seen.append("auth")
        assert request.route is not None
        if request.route.auth is None:
            return await call_next(request)
        if request.header("authorization") != f"Bearer {SECRET}":
            raise HttpError(401, "Missing or unknown API key", {"WWW-Authenticate": "Bearer"})
        request.key_name = "ops-laptop"
        return await call_next(request)

    async with running_server(middleware=[outer, auth]) as server, \
            httpx.AsyncClient(base_url=server.url) as client:
        public = await client.get("/hello")
        missing = await client.get("/nope")
        denied = await client.post("/items", json={"name": "x", "count": 1})
        with caplog.at_level(logging.INFO, logger="gpufleet.access"):
            allowed = await client.post("/items", json={"name": "x", "count": 1},
                                        headers={"Authorization": f"Bearer {SECRET}"})
    assert public.status_code == 200 and public.headers["x-outer"] == "1"
    assert missing.status_code == 404  # unknown paths never reach middleware
    assert seen[:2] == ["outer:GET /hello", "auth"]
    assert len(seen) == 6
    assert denied.status_code == 401
    assert denied.headers["www-authenticate"] == "Bearer"
    assert allowed.status_code == 201
    lines = [r.getMessage() for r in caplog.records if r.name == "gpufleet.access"]
    assert len(lines) == 1
    assert lines[0].startswith("127.0.0.1 POST /items 201 ")
    assert lines[0].endswith(" ops-laptop")
    assert SECRET not in caplog.text


async def test_access_log_has_one_line_per_request_without_query_string(
        caplog: pytest.LogCaptureFixture) -> None:
    async with running_server() as server, httpx.AsyncClient(base_url=server.url) as client:
        with caplog.at_level(logging.INFO, logger="gpufleet.access"):
            response = await client.get("/hello", params={"token": SECRET})
            await client.get("/nope")
    lines = [r.getMessage() for r in caplog.records if r.name == "gpufleet.access"]
    assert len(lines) == 2
    client, method, path, status, nbytes, elapsed, key = lines[0].split(" ")
    assert (client, method, path, status, key) == ("127.0.0.1", "GET", "/hello", "200", "-")
    assert int(nbytes) == len(response.content)
    assert elapsed.endswith("ms") and float(elapsed[:-2]) >= 0
    assert lines[1].startswith("127.0.0.1 GET /nope 404 ")
    assert SECRET not in caplog.text


class SteppedClock:
    """A clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_access_log_time_runs_from_the_request_arriving_not_from_keep_alive_idle(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import gpufleet.server.http.protocol as protocol_module

    clock = SteppedClock()
    monkeypatch.setattr(protocol_module, "_clock", clock)
    app = DemoApp()
    async with running_server(app=app) as server, httpx.AsyncClient(base_url=server.url) as client:
        with caplog.at_level(logging.INFO, logger="gpufleet.access"):
            assert (await client.get("/hello")).status_code == 200
            # The connection is back waiting for its next request: time spent idle here...
            async with asyncio.timeout(5):
                while not all(p.idle for p in server._protocols) or not server._protocols:
                    await asyncio.sleep(0)
            clock.now = 100.0
            waiting = asyncio.create_task(client.get("/wait"))
            await asyncio.wait_for(app.started.wait(), 5)
            clock.now = 100.25  # ...does not count; time in the handler does
            app.release.set()
            assert (await waiting).status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "gpufleet.access"]
    assert lines[0].startswith("127.0.0.1 GET /hello 200 ") and " 0.0ms " in lines[0]
    assert lines[1].startswith("127.0.0.1 GET /wait 200 ") and " 250.0ms " in lines[1]


async def test_keep_alive_and_pipelined_requests_are_answered_in_order() -> None:
    async with running_server() as server:
        pipelined = (b"GET /items/1 HTTP/1.1\r\nHost: t\r\n\r\n"
                     b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
                     b"GET /items/3 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        raw = await raw_exchange(server, pipelined)
    assert raw.count(b"HTTP/1.1 200 OK") == 3
    first, second, third = raw.index(b'{"id":"1"}'), raw.index(b"hello"), raw.index(b'{"id":"3"}')
    assert first < second < third
    assert raw.endswith(b'{"id":"3"}')  # and the server closed after the third


async def test_connection_close_is_honoured_and_http10_works() -> None:
    async with running_server() as server:
        closed = await raw_exchange(server, b"GET /hello HTTP/1.1\r\nHost: t\r\n"
                                            b"Connection: close\r\n\r\n")
        http10 = await raw_exchange(server, b"GET /hello HTTP/1.0\r\n\r\n")
    for raw in (closed, http10):
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert b"connection: close" in head.lower()
        assert body.startswith(b'{"hello":"world"')


async def test_graceful_shutdown_finishes_the_in_flight_request() -> None:
    app = DemoApp()
    server = HttpServer(app.router(), FAST)
    await server.start("127.0.0.1", 0)
    idle_reader, idle_writer = await asyncio.open_connection(*server.address)
    async with httpx.AsyncClient(base_url=server.url) as client:
        in_flight = asyncio.create_task(client.get("/wait"))
        await app.started.wait()
        stopping = asyncio.create_task(server.shutdown())
        async with asyncio.timeout(5):
            assert await idle_reader.read(-1) == b""  # idle connections are closed at once
        assert not stopping.done()
        app.release.set()
        response = await in_flight
        await asyncio.wait_for(stopping, 5)
    idle_writer.close()
    assert response.status_code == 200
    assert response.json() == {"waited": True}
    assert response.headers["connection"] == "close"
    with pytest.raises(OSError):
        await asyncio.open_connection(*server.address)


async def test_shutdown_cancels_requests_past_the_grace_period() -> None:
    app = DemoApp()
    limits = FAST.model_copy(update={"shutdown_grace_s": 0.2})
    server = HttpServer(app.router(), limits)
    await server.start("127.0.0.1", 0)
    async with httpx.AsyncClient(base_url=server.url) as client:
        in_flight = asyncio.create_task(client.get("/wait"))
        await app.started.wait()
        await asyncio.wait_for(server.shutdown(), 5)
        with pytest.raises(httpx.TransportError):
            await in_flight
    assert server.open_connections == 0


async def test_sigterm_shuts_down_gracefully_and_runs_on_stop() -> None:
    stopped: list[str] = []

    async def on_stop() -> None:
        stopped.append("store closed")

    async with running_server() as server:
        runner = asyncio.create_task(run_until_signalled(server, on_stop))
        await asyncio.sleep(0)  # let it install its signal handlers
        # Never send a signal nobody catches: it would end the test run.
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(runner, 5) == 0
        assert stopped == ["store closed"]
        with pytest.raises(OSError):
            await asyncio.open_connection(*server.address)


async def test_handler_headers_pass_through_and_unsafe_ones_become_500() -> None:
    async with running_server() as server, httpx.AsyncClient(base_url=server.url) as client:
        good = await client.get("/header", params={"value": "attachment; filename=a.csv"})
        split = await client.get("/header", params={"value": "x\r\nSet-Cookie: evil=1"})
        again = await client.get("/hello")
    assert good.headers["content-disposition"] == "attachment; filename=a.csv"
    assert good.headers["content-type"] == "text/plain; charset=utf-8"
    assert split.status_code == 500 and "set-cookie" not in split.headers
    assert again.status_code == 200


async def test_access_log_keeps_the_path_as_sent_so_lines_cannot_be_forged(
        caplog: pytest.LogCaptureFixture) -> None:
    async with running_server() as server, httpx.AsyncClient(base_url=server.url) as client:
        with caplog.at_level(logging.INFO, logger="gpufleet.access"):
            response = await client.get("/items/a%0AGET%20admin%20200")
    assert response.json() == {"id": "a\nGET admin 200"}
    (line,) = [r.getMessage() for r in caplog.records if r.name == "gpufleet.access"]
    assert line.startswith("127.0.0.1 GET /items/a%0AGET%20admin%20200 200 ")

"""The console's keep-alive transport against real sockets: a real server, and a raw one that misbehaves on purpose."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from gpufleet.console.config import NodeTarget, Secret
from gpufleet.console.poller import SharedTransportFactory
from gpufleet.console.transport import MAX_BODY_BYTES, KeepAliveTransport
from gpufleet.server.client import AsyncGpuFleetClient, ConnectionFailed, RequestTimeout
from tests.test_http_server import running_server
from tests.test_http_tls import certificate as certificate  # the fixture, made once per module

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP server on 127.0.0.1:0 running ``handler`` per connection; yields its URL and a connection count."""
    accepted: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", accepted
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return head + await reader.readexactly(length)


def answer(body: bytes, *extra: bytes) -> bytes:
    return b"\r\n".join([b"HTTP/1.1 200 OK", b"Content-Length: %d" % len(body), *extra, b"", body])


def client(url: str, transport: httpx.AsyncBaseTransport | None = None, timeout: float = 5.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, transport=transport or KeepAliveTransport(ssl.create_default_context()),
                             timeout=timeout)


async def test_requests_and_answers_through_the_real_server() -> None:
    async with running_server() as server, client(server.url) as http:
        got = await http.get("/hello", params={"x": "1 2"})
        echoed = await http.post("/echo", content=b"a body")
        head = await http.head("/hello")
        missing = await http.get("/nope")
    assert got.status_code == 200 and got.json() == {"hello": "world", "query": {"x": "1 2"}}
    assert got.headers["content-type"] == "application/json"
    assert echoed.content == b"a body"
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"]
    assert missing.status_code == 404 and "error" in missing.json()


async def test_one_connection_serves_every_poll_and_a_closed_one_is_replaced() -> None:
    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError):
            while True:
                request = await read_request(reader)
                writer.write(answer(request.split(b" ", 2)[1]))
                await writer.drain()

    async with raw_server(keep_alive) as (url, accepted), client(url) as http:
        paths = [(await http.get(f"/poll/{i}")).text for i in range(5)]
    assert paths == [f"/poll/{i}" for i in range(5)] and len(accepted) == 1

    async def one_answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b"once"))  # no "Connection: close": the client only learns by the socket closing
        await writer.drain()

    async with raw_server(one_answer_then_close) as (url, accepted), client(url) as http:
        first = await http.get("/a")
        await asyncio.sleep(0.05)  # the close reaches the idle connection
        second = await http.get("/b")
    assert first.text == second.text == "once" and len(accepted) == 2


async def test_chunked_and_read_to_close_bodies_and_connection_close() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: 1\r\n\r\n")
        await writer.drain()
        await read_request(reader)  # the connection stays open for the next request
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the end")
        await writer.drain()

    async with raw_server(chunked) as (url, accepted), client(url) as http:
        first = await http.get("/1")
        second = await http.get("/2")
        third = await http.get("/3")  # the server said close: a new connection
    assert first.text == "hello world" and second.text == "to the end"
    assert third.status_code == 200 and len(accepted) == 2


@pytest.mark.parametrize("reply", [
    b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1),
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * 70_000 + b"\r\n\r\n",
    b"",
])
async def test_a_broken_answer_is_a_failed_poll_not_a_crash(reply: bytes) -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply)
        await writer.drain()

    async with raw_server(broken) as (url, _):
        node = SharedTransportFactory()(NodeTarget("n1", url, Secret("t")), 5.0)
        with pytest.raises(ConnectionFailed):
            await node.get_gpu_status()
        await node.aclose()


async def test_a_silent_node_times_out_and_a_closed_port_fails_to_connect() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async with raw_server(silent) as (url, _):
        node = SharedTransportFactory()(NodeTarget("n1", url, None), 0.2)
        with pytest.raises(RequestTimeout):
            await node.get_gpu_status()
        await node.aclose()
    async with raw_server(silent) as (url, _):
        pass  # closed again: nothing listens on its port now
    node = SharedTransportFactory()(NodeTarget("n1", url, None), 2.0)
    with pytest.raises(ConnectionFailed):
        await node.get_gpu_status()
    await node.aclose()


async def test_a_token_that_would_split_the_request_is_never_sent() -> None:
    requests: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.read(65536))

    async with raw_server(record) as (url, _):
        node = AsyncGpuFleetClient(url, api_key="t\r\nX-Evil: 1", transport=KeepAliveTransport(ssl.create_default_context()))
        with pytest.raises((ConnectionFailed, httpx.LocalProtocolError)):
            await node.get_gpu_status()
        await node.aclose()
    assert not any(b"X-Evil" in r for r in requests)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI")
async def test_https_with_the_shared_tls_context(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    async with running_server(ssl_context=server_context) as server:
        async with client(server.url, KeepAliveTransport(ssl.create_default_context(cafile=str(cert)))) as http:
            assert (await http.get("/hello")).json()["hello"] == "world"
            assert (await http.post("/echo", content=b"over tls")).content == b"over tls"
        async with client(server.url, KeepAliveTransport(ssl.create_default_context())) as untrusted:
            with pytest.raises(httpx.ConnectError):
                await untrusted.get("/hello")  # not signed by a CA the context trusts


async def test_an_http_1_0_answer_is_not_kept_unless_it_says_keep_alive() -> None:
    async def one_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()  # never answers again, and never closes first

    async with raw_server(one_per_connection) as (url, accepted), client(url, timeout=2.0) as http:
        answers = [(await http.get("/")).text for _ in range(2)]
    assert answers == ["ok", "ok"] and len(accepted) == 2

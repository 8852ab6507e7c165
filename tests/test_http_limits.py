"""Every limit of the HTTP core, hit with raw sockets; after each the server still serves."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import pytest

from gpufleet.server.config import Limits
from gpufleet.server.http.server import HttpServer
from tests.test_http_server import FAST, assert_still_serving, raw_exchange, running_server


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, lower-cased headers and body of one raw response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    return int(status_line.split(" ")[1]), headers, body


def assert_error(raw: bytes, status: int, contains: str = "") -> None:
    """One JSON error response with ``status``, after which the server closed the connection."""
    got, headers, body = parse(raw)
    assert got == status, raw[:200]
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)  # nothing after it: closed
    assert contains in json.loads(body)["error"]


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",
    b"GET /hello HTTP/1.1\r\nHost: t\r\nBad Header Name: x\r\n\r\n",
    b"GET /hello HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
])
async def test_malformed_request_is_400_and_closes(request_bytes: bytes) -> None:
    async with running_server() as server:
        assert_error(await raw_exchange(server, request_bytes), 400, "Malformed")
        await assert_still_serving(server)


async def test_h11_error_text_with_request_bytes_is_never_echoed() -> None:
    async with running_server() as server:
        raw = await raw_exchange(server, b"GET /hello HTTP/1.1\r\nHost: t\r\n"
                                         b"Authorization: Bearer sec\x00ret\r\n\r\n")
    assert_error(raw, 400)
    assert b"sec" not in raw


@pytest.mark.parametrize("split", [False, True], ids=["one-write", "many-writes"])
async def test_oversize_headers_are_431(split: bool) -> None:
    headers = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 100) for i in range(60))  # ~7 KB
    request = b"GET /hello HTTP/1.1\r\nHost: t\r\n" + headers + b"\r\n"
    async with running_server() as server:
        assert server.address is not None
        reader, writer = await asyncio.open_connection(*server.address)
        parts = [request[i:i + 1000] for i in range(0, len(request), 1000)] if split else [request]
        with contextlib.suppress(ConnectionError):
            for part in parts:
                writer.write(part)
                await writer.drain()
        async with asyncio.timeout(5):
            raw = await reader.read(-1)
        writer.close()
        assert_error(raw, 431, "too large")
        await assert_still_serving(server)


async def test_body_over_the_limit_is_413() -> None:
    body = b"x" * (FAST.max_body_bytes + 1)
    request = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    async with running_server() as server:
        assert_error(await raw_exchange(server, request), 413, "too large")
        await assert_still_serving(server)


async def test_lying_content_length_is_413_before_any_body_is_read() -> None:
    claims_10_mb = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10485760\r\n\r\nonly this"
    async with running_server() as server:
        assert_error(await raw_exchange(server, claims_10_mb), 413, str(FAST.max_body_bytes))
        await assert_still_serving(server)


async def test_chunked_body_is_accepted_and_counted() -> None:
    chunked = (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
               b"Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    async with running_server() as server:
        status, _, body = parse(await raw_exchange(server, chunked))
    assert (status, body) == (200, b"hello world")


async def test_chunked_body_over_the_limit_is_413() -> None:
    chunk = b"a" * 8192
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(10))  # 80 KiB
    request = (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               + chunks + b"0\r\n\r\n")
    async with running_server() as server:
        assert_error(await raw_exchange(server, request), 413, "too large")
        await assert_still_serving(server)


@pytest.mark.parametrize("request_bytes", [
    b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
], ids=["bad-size", "bad-terminator"])
async def test_bad_chunked_encoding_is_400(request_bytes: bytes) -> None:
    async with running_server() as server:
        assert_error(await raw_exchange(server, request_bytes), 400)
        await assert_still_serving(server)


async def test_both_content_length_and_transfer_encoding_is_400() -> None:
    smuggle = (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
    async with running_server() as server:
        raw = await raw_exchange(server, smuggle)
        assert_error(raw, 400, "Content-Length and Transfer-Encoding")
        assert raw.count(b"HTTP/1.1") == 1  # the smuggled request was never answered
        await assert_still_serving(server)


async def test_content_length_longer_than_the_body_at_eof_is_400() -> None:
    async with running_server() as server:
        assert server.address is not None
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nshort")
        writer.write_eof()
        async with asyncio.timeout(5):
            raw = await reader.read(-1)
        writer.close()
        assert_error(raw, 400)
        await assert_still_serving(server)


async def trickle(writer: asyncio.StreamWriter, data: bytes, every_s: float) -> None:
    """Send ``data`` one byte at a time, ``every_s`` apart, until done or the peer closes."""
    with contextlib.suppress(ConnectionError):
        for i in range(len(data)):
            writer.write(data[i:i + 1])
            await writer.drain()
            await asyncio.sleep(every_s)


@pytest.mark.parametrize("prefix, phase", [
    (b"", "headers"),
    (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n", "body"),
], ids=["head", "body"])
async def test_trickling_client_cannot_extend_the_deadline(prefix: bytes, phase: str) -> None:
    limits = FAST.model_copy(update={"header_timeout_s": 0.5, "body_timeout_s": 0.5})
    slow = b"GET /hello HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    async with running_server(limits) as server:
        assert server.address is not None
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(prefix)
        trickler = asyncio.create_task(trickle(writer, b"x" * 1000 if prefix else slow, 0.1))
        async with asyncio.timeout(5):
            raw = await reader.read(-1)
        trickler.cancel()
        writer.close()
        assert_error(raw, 408, phase)
        await assert_still_serving(server)


async def test_idle_keep_alive_connection_is_closed_silently() -> None:
    limits = FAST.model_copy(update={"keepalive_timeout_s": 0.3})
    async with running_server(limits) as server:
        assert server.address is not None
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        async with asyncio.timeout(5):
            raw = await reader.read(-1)  # the response, then EOF once idle too long
        writer.close()
    status, headers, body = parse(raw)
    assert status == 200 and "connection" not in headers
    assert body == b'{"hello":"world","query":{}}'


async def wait_for_connections(server: HttpServer, count: int) -> None:
    async with asyncio.timeout(10):
        while server.open_connections < count:
            await asyncio.sleep(0.01)


async def test_200_idle_connections_do_not_stop_a_real_request() -> None:
    # The idle sockets send nothing, so the header timeout closes each one that long after
    # its accept: with FAST's 2 s, a loaded box that takes longer to open 200 of them (and
    # ask the real request) lost the first ones before the count was reached (reproduced
    # with 0.05 s). That closing has its own test (test_robust_clients); here they stay.
    limits = FAST.model_copy(update={"max_connections": 250, "max_connections_per_address": 250,
                                     "header_timeout_s": 120.0})
    async with running_server(limits) as server:
        assert server.address is not None
        idle = [await asyncio.open_connection(*server.address) for _ in range(200)]
        await wait_for_connections(server, 200)
        await assert_still_serving(server)
        assert server.open_connections >= 200
        for _, writer in idle:
            writer.close()


async def test_connections_past_the_cap_get_503() -> None:
    limits = FAST.model_copy(update={"max_connections": 2})
    async with running_server(limits) as server:
        assert server.address is not None
        held = [await asyncio.open_connection(*server.address) for _ in range(2)]
        await wait_for_connections(server, 2)
        raw = await raw_exchange(server, b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        assert_error(raw, 503, "Server busy: too many connections")
        for _, writer in held:
            writer.close()
        await assert_still_serving(server)


async def test_expect_100_continue_is_answered_before_the_body() -> None:
    async with running_server() as server:
        assert server.address is not None
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n"
                     b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(5):
            interim = await reader.readuntil(b"\r\n\r\n")
            writer.write(b"ok")
            raw = await reader.read(-1)
        writer.close()
    assert interim.startswith(b"HTTP/1.1 100 ")
    assert parse(raw)[::2] == (200, b"ok")


def test_limits_defaults_match_the_issue() -> None:
    limits = Limits()
    assert limits.max_header_bytes == 16 * 1024
    assert limits.close_linger_s > 0


async def test_httpx_client_sending_a_huge_body_reads_the_413_not_a_reset() -> None:
    async with running_server() as server, httpx.AsyncClient(base_url=server.url) as client:
        response = await client.post("/echo", content=b"x" * (FAST.max_body_bytes * 64))
    assert response.status_code == 413
    assert response.json()["error"].startswith("Request body too large")


def _blocking_exchange(address: tuple[str, int], data: bytes) -> bytes:
    """Send all of ``data`` at once (so the server finds it buffered) and read to the close."""
    import socket

    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(1 << 16):
            received += chunk
    return received


@pytest.mark.parametrize("shape", ["tiny chunks", "pipelined requests"])
async def test_a_client_that_keeps_its_socket_full_never_holds_the_loop(
        shape: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Buffered bytes are parsed without waiting, so the loop must yield on its own: between
    two turns of another coroutine the server parses a bounded run of events, not all of them."""
    import h11

    from gpufleet.server.http import protocol

    turns = 0
    runs: dict[int, int] = {}  # loop turn -> body chunks and requests parsed in it
    real_next_event = protocol.HttpProtocol._next_event

    def counted(self: protocol.HttpProtocol):  # type: ignore[no-untyped-def]
        event = real_next_event(self)
        if isinstance(event, h11.Data | h11.Request):
            runs[turns] = runs.get(turns, 0) + 1
        return event

    monkeypatch.setattr(protocol.HttpProtocol, "_next_event", counted)
    if shape == "tiny chunks":
        data = (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                b"Connection: close\r\n\r\n" + b"1\r\nx\r\n" * 20_000 + b"0\r\n\r\n")
    else:
        data = b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n" * 2_000 + \
            b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    async with running_server() as server:
        assert server.address is not None
        stop = asyncio.Event()

        async def other_work() -> None:  # what every other connection would be: a turn of the loop
            nonlocal turns
            while not stop.is_set():
                turns += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(other_work())
        try:
            raw = await asyncio.to_thread(_blocking_exchange, server.address, data)
        finally:
            stop.set()
            await ticker
        if shape == "tiny chunks":
            assert parse(raw)[:1] == (200,) and raw.endswith(b"x" * 20_000)
        else:
            assert raw.count(b"HTTP/1.1 200 OK") == 2_001
    assert sum(runs.values()) >= 2_001
    assert max(runs.values()) <= protocol.YIELD_EVERY_EVENTS, max(runs.values())

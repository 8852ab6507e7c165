"""A lean HTTP/1.1 transport for the console's node clients: keep-alive sockets, nothing else.

Each node's client asks one thing at a time (its poller's status, or one purge),
so a transport needs no pool: it keeps its idle connections (two at most) and
opens another when none is free. httpcore's pool (anyio streams, locks,
expiry checks, h11's state machine) was about 40 % of what a poll cost the
console at 64 nodes; this writes the request in one go and reads the answer
with asyncio's own stream reader. Failures are httpx's transport errors, so
the client maps them as before (timeouts to RequestTimeout, the rest to
ConnectionFailed).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpx

MAX_HEAD_BYTES = 64 * 1024  # a status line and headers; a node's are under 1 KB
MAX_BODY_BYTES = 64 * 1024 * 1024  # a 8-GPU node's status is about 12 KB
MAX_IDLE = 2
_FORBIDDEN = (b"\r", b"\n", b"\0")


class _Stale(Exception):
    """A kept connection the server had closed before it read the request: try a fresh one."""


class _Body(httpx.AsyncByteStream):
    """The body, already read whole (httpx decodes any Content-Encoding from it)."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._body


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @property
    def usable(self) -> bool:
        # An idle connection the server closed has already seen its end of file.
        return not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


async def _timed(awaitable: Any, seconds: float | None, error: type[httpx.TimeoutException], what: str) -> Any:
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except TimeoutError:
        raise error(f"{what} timed out") from None


class KeepAliveTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over asyncio streams, with a TLS context shared by every node's transport."""

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        self._ssl = ssl_context
        self._idle: list[_Connection] = []

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}", request=request)
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        message = _request_bytes(request, await request.aread())
        while self._idle:
            connection = self._idle.pop()
            if not connection.usable:
                connection.close()
                continue
            try:
                return await self._exchange(connection, message, request, timeouts, reused=True)
            except _Stale:
                continue
        connection = await self._connect(url, timeouts.get("connect"))
        return await self._exchange(connection, message, request, timeouts, reused=False)

    async def _connect(self, url: httpx.URL, timeout: float | None) -> _Connection:
        tls = url.scheme == "https"
        port = url.port or (443 if tls else 80)
        try:
            reader, writer = await _timed(
                asyncio.open_connection(url.host, port, ssl=self._ssl if tls else None,
                                        server_hostname=url.host if tls else None, limit=MAX_HEAD_BYTES),
                timeout, httpx.ConnectTimeout, "connect")
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from None
        return _Connection(reader, writer)

    async def _exchange(self, connection: _Connection, message: bytes, request: httpx.Request,
                        timeouts: dict[str, float | None], *, reused: bool) -> httpx.Response:
        keep = False
        try:
            try:
                connection.writer.write(message)
                await _timed(connection.writer.drain(), timeouts.get("write"), httpx.WriteTimeout, "write")
            except OSError as exc:
                if reused and request.method in ("GET", "HEAD"):
                    raise _Stale from None
                raise httpx.WriteError(str(exc) or type(exc).__name__) from None
            try:
                response, keep = await _timed(self._read(connection.reader, request, reused),
                                              timeouts.get("read"), httpx.ReadTimeout, "read")
            except (OSError, ssl.SSLError) as exc:
                raise httpx.ReadError(str(exc) or type(exc).__name__) from None
            return response
        finally:
            if keep and len(self._idle) < MAX_IDLE:
                self._idle.append(connection)
            else:
                connection.close()

    async def _read(self, reader: asyncio.StreamReader, request: httpx.Request,
                    reused: bool) -> tuple[httpx.Response, bool]:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if reused and not exc.partial and request.method in ("GET", "HEAD"):
                    raise _Stale from None  # closed while idle, before a byte of an answer
                raise httpx.RemoteProtocolError("the server closed the connection without an answer") from None
            except asyncio.LimitOverrunError:
                raise httpx.RemoteProtocolError("the answer's headers are too long") from None
            version, status, reason, headers = _parse_head(head)
            if not 100 <= status < 200:  # an interim answer (100 Continue) is followed by the real one
                break
        fields = {name.lower(): value for name, value in headers}
        connection = fields.get(b"connection", b"").lower()
        # HTTP/1.0 closes after each answer unless it says otherwise; 1.1 keeps it open unless it says so.
        keep = (b"keep-alive" in connection if version == b"HTTP/1.0" else b"close" not in connection) \
            and "close" not in request.headers.get("connection", "").lower()
        if request.method == "HEAD" or status in (204, 304):
            body = b""
        elif b"chunked" in fields.get(b"transfer-encoding", b"").lower():
            body = await _chunked(reader)
        elif b"content-length" in fields:
            try:
                length = int(fields[b"content-length"])
            except ValueError:
                raise httpx.RemoteProtocolError("a Content-Length that is not a number") from None
            if not 0 <= length <= MAX_BODY_BYTES:
                raise httpx.RemoteProtocolError(f"a body of {length} bytes")
            body = await _exactly(reader, length)
        else:  # the body runs to the end of the connection
            body = await reader.read(MAX_BODY_BYTES + 1)
            while len(body) <= MAX_BODY_BYTES and not reader.at_eof():
                more = await reader.read(MAX_BODY_BYTES + 1 - len(body))
                if not more:
                    break
                body += more
            if len(body) > MAX_BODY_BYTES:
                raise httpx.RemoteProtocolError("a body over the console's limit")
            keep = False
        response = httpx.Response(status, headers=headers, stream=_Body(body), request=request,
                                  extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason})
        return response, keep


async def _exactly(reader: asyncio.StreamReader, length: int) -> bytes:
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise httpx.RemoteProtocolError("the server closed the connection mid-body") from None


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            raise httpx.RemoteProtocolError("a malformed chunked body") from None
        try:
            length = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise httpx.RemoteProtocolError("a malformed chunk size") from None
        if length < 0 or size + length > MAX_BODY_BYTES:
            raise httpx.RemoteProtocolError("a body over the console's limit")
        if length == 0:
            while True:  # trailers, up to the blank line
                try:
                    if await reader.readuntil(b"\r\n") == b"\r\n":
                        return b"".join(parts)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    raise httpx.RemoteProtocolError("a malformed chunked body") from None
        chunk = await _exactly(reader, length + 2)
        if chunk[-2:] != b"\r\n":
            raise httpx.RemoteProtocolError("a malformed chunk")
        parts.append(chunk[:-2])
        size += length


def _parse_head(head: bytes) -> tuple[bytes, int, bytes, list[tuple[bytes, bytes]]]:
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
        raise httpx.RemoteProtocolError("not an HTTP/1.1 answer")
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise httpx.RemoteProtocolError("a malformed header line")
        headers.append((name, value.strip()))
    return parts[0], int(parts[1]), parts[2] if len(parts) > 2 else b"", headers


def _request_bytes(request: httpx.Request, body: bytes) -> bytes:
    """The request line, headers and body, refusing a header that would split the request."""
    target = request.url.raw_path
    if any(c in target for c in (b" ", *_FORBIDDEN)):
        raise httpx.LocalProtocolError("an invalid request target")
    lines = [request.method.encode("ascii") + b" " + target + b" HTTP/1.1"]
    for name, value in request.headers.raw:
        if any(c in name or c in value for c in _FORBIDDEN) or b":" in name:
            raise httpx.LocalProtocolError(f"an invalid header {name.decode('latin-1')!r}")
        if name.lower() in (b"content-length", b"transfer-encoding"):
            continue  # the body is sent whole: its length is known
        lines.append(name + b": " + value)
    if body or request.method in ("POST", "PUT", "PATCH"):
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body

"""The h11 request/response loop of one connection, with every limit of ``Limits`` enforced."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

import h11

from gpufleet.server.config import Limits
from gpufleet.server.http.connection import PeerGone, StreamConnection
from gpufleet.server.http.errors import json_error
from gpufleet.server.http.forwarded import ClientAddresses
from gpufleet.server.http.types import Request, Response
from gpufleet.server.http.wire import encode_closing, headers_are_safe, http_date, reason_phrase

access_log = logging.getLogger("gpufleet.access")
log = logging.getLogger("gpufleet.http")

# Theory of the loop
# ------------------
# h11 is a pure state machine: we feed it bytes (receive_data) and pull events
# (next_event) until it has a whole Request, then pull Data events until
# EndOfMessage. Only then is the handler called, with the whole body in memory,
# so a handler never sees a half-read request and the limits are enforced in one
# place, here. The response goes out as one write (head + body). If both sides
# are DONE and nobody asked to close, start_next_cycle() resets the machine and
# the loop waits for the next request; bytes of a pipelined request already
# received stay in h11's buffer and are parsed next, so pipelined requests are
# answered one at a time, in order. Phases and their clocks:
#   new   (a connection that sent nothing)   header_timeout_s    -> close silently
#   idle  (no byte of the next request yet)  keepalive_timeout_s -> close silently
#   head  (from its first byte)              header_timeout_s    -> 408 and close
#   body  (from the end of the head)         body_timeout_s      -> 408 and close
#   handler                                  handler_timeout_s   -> 504 (server.py)
# Each deadline is absolute: a client trickling bytes cannot extend it. Any
# protocol error or exceeded limit answers {"error": ...} with Connection: close,
# then lingers briefly so the client reads the answer instead of a reset.
# A read returns at once while bytes are buffered, so a client that keeps its
# socket full (pipelined requests, a body of tiny chunks) would never let the loop
# run anyone else: the loop yields before each pipelined request and every
# YIELD_EVERY_EVENTS body events, so other connections are served in between.

Dispatch = Callable[[Request], Awaitable[Response]]

# Body events (h11 Data: one per chunk of a chunked body) parsed between two yields to the loop.
YIELD_EVERY_EVENTS = 64

# The access log's clock (a module name so a test can step it without touching the loop's).
_clock = time.perf_counter


@dataclass(slots=True)
class ServerState:
    """What every connection needs to know about its server."""

    closing: bool = False  # shutting down: answer in-flight requests with Connection: close
    # told (status, seconds) of every request refused before routing (for /metrics)
    on_reject: Callable[[int, float], None] | None = None
    addresses: ClientAddresses = field(default_factory=ClientAddresses)  # trusted proxies


class _Reject(Exception):
    """A request the server refuses before any handler runs; the connection then closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_REJECT_MESSAGES = {
    400: "Malformed HTTP request",
    431: "Request header fields too large",
    501: "Unsupported Transfer-Encoding",
}


class HttpProtocol:
    """Serves requests on one connection until it closes, times out or is told to stop."""

    def __init__(self, stream: StreamConnection, limits: Limits, dispatch: Dispatch,
                 state: ServerState) -> None:
        self._stream = stream
        self._limits = limits
        self._dispatch = dispatch
        self._state = state
        self._h11 = h11.Connection(h11.SERVER,
                                   max_incomplete_event_size=limits.max_header_bytes)
        # True while waiting for the first byte of the next request: safe to close.
        self.idle = True
        self._method = "-"
        self._path = "-"
        self._client = stream.peer[0] if stream.peer else "-"  # the access log's; X-F-F once read
        self._served = 0  # requests answered: a connection that sent nothing gets the header timeout
        # When the current request's first bytes arrived: its access-log time runs from
        # here, so keep-alive idle time before it does not count.
        self._started = _clock()

    def close_if_idle(self) -> None:
        """Close now if no request is in progress (graceful shutdown)."""
        if self.idle:
            self._stream.close_soon()

    async def run(self) -> None:
        try:
            while True:
                try:
                    request = await self._receive_request()
                except _Reject as reject:
                    await self._refuse(reject)
                    return
                if request is None:
                    return
                response = await self._dispatch(request)
                if not await self._send_response(request, response):
                    return
                self._h11.start_next_cycle()
                if self._h11.trailing_data[0]:
                    await asyncio.sleep(0)  # a pipelined request waits its turn behind others
        except PeerGone:
            self._stream.abort()
        finally:
            await self._stream.close()

    # -- receiving --------------------------------------------------------------------

    async def _receive_request(self) -> Request | None:
        """The next whole request, or None when the connection should just close."""
        h = self._h11
        stream = self._stream
        in_head = bool(h.trailing_data[0])
        if self._state.closing and not in_head:
            return None
        self.idle = not in_head
        self._method = self._path = "-"
        if in_head:  # pipelined: its bytes are already here
            self._started = _clock()
        limits = self._limits
        # A connection that has sent nothing yet is a client that should be talking now:
        # it gets the header timeout, not the keep-alive time a finished request earns.
        deadline = stream.now() + (limits.header_timeout_s if in_head or not self._served
                                   else limits.keepalive_timeout_s)
        while True:
            event = self._next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await stream.read(deadline)
                except TimeoutError:
                    if not in_head:
                        return None  # idle keep-alive connection: close silently
                    raise _Reject(408, "Request timed out: headers not received in time") from None
                if data and not in_head:
                    in_head, self.idle = True, False
                    self._started = _clock()
                    deadline = stream.now() + limits.header_timeout_s
                h.receive_data(data)
            elif isinstance(event, h11.Request):
                self.idle = False
                return await self._receive_body(event)
            else:  # ConnectionClosed: the client went away between requests
                self.idle = False
                return None

    def _next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        try:
            return self._h11.next_event()
        except h11.RemoteProtocolError as exc:
            # h11's message may quote request bytes (an Authorization value, say): never echo it.
            status = exc.error_status_hint
            raise _Reject(status, _REJECT_MESSAGES.get(status, "Malformed HTTP request")) from None

    async def _receive_body(self, head: h11.Request) -> Request:
        h = self._h11
        limits = self._limits
        self._method = head.method.decode("ascii", "replace")
        target = head.target.decode("latin-1")
        raw_path, _, query = target.partition("?")
        if not raw_path.startswith("/"):
            raw_path = urlsplit(raw_path).path or "/"  # absolute-form or "*"
        # The access log gets the path as sent: a decoded %0A must not forge log lines.
        self._path = raw_path

        headers: dict[str, str] = {}
        head_size = len(head.method) + len(head.target) + 13
        for name_b, value_b in head.headers:
            head_size += len(name_b) + len(value_b) + 4
            name = name_b.decode("latin-1")
            value = value_b.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if head_size > limits.max_header_bytes:
            raise _Reject(431, _REJECT_MESSAGES[431])
        if "transfer-encoding" in headers and "content-length" in headers:
            # h11 lets Transfer-Encoding win; a proxy in front may not agree (smuggling).
            raise _Reject(400, "Both Content-Length and Transfer-Encoding given")
        declared = headers.get("content-length")
        if declared is not None and int(declared) > limits.max_body_bytes:
            raise _Reject(413, self._too_large())

        if h.they_are_waiting_for_100_continue:
            await self._stream.write(h.send(h11.InformationalResponse(status_code=100, headers=[])))
        chunks: list[bytes] = []
        size = 0
        deadline = self._stream.now() + limits.body_timeout_s
        events = 0
        while True:
            events += 1
            if events % YIELD_EVERY_EVENTS == 0:
                await asyncio.sleep(0)  # a body of tiny chunks must not hold the loop
            event = self._next_event()
            if event is h11.NEED_DATA:
                try:
                    h.receive_data(await self._stream.read(deadline))
                except TimeoutError:
                    raise _Reject(408, "Request timed out: body not received in time") from None
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > limits.max_body_bytes:
                    raise _Reject(413, self._too_large())
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise _Reject(400, _REJECT_MESSAGES[400])

        peer = self._stream.peer
        remote = self._state.addresses.client(peer[0] if peer else None,
                                               headers.get("x-forwarded-for"))
        self._client = remote or "-"
        return Request(
            method=self._method,
            target=target,
            path=unquote(raw_path) if "%" in raw_path else raw_path,
            query=dict(parse_qsl(query, keep_blank_values=True)) if query else {},
            headers=headers,
            body=chunks[0] if len(chunks) == 1 and type(chunks[0]) is bytes else b"".join(chunks),
            client=peer,
            remote=remote,
            max_json_depth=limits.max_json_depth,
        )

    def _too_large(self) -> str:
        return f"Request body too large: the limit is {self._limits.max_body_bytes} bytes"

    # -- sending ----------------------------------------------------------------------

    async def _send_response(self, request: Request, response: Response) -> bool:
        """Send ``response``; True when the connection stays open for another request."""
        h = self._h11
        if not headers_are_safe(response):
            log.error("Handler for %s %s returned a header that cannot be sent "
                      "(CR, LF, NUL or non-Latin-1)", request.method, self._path)
            response = json_error(500, "Internal server error")
        close = self._state.closing
        data = self._encode(response, close=close, head_only=request.method == "HEAD")
        sent = 0 if request.method == "HEAD" else len(response.body)
        try:
            await self._stream.write(data)
        finally:
            self._served += 1
            _log_access(self._client, request.method, self._path, response.status, sent,
                        self._started, request.key_name)
        return not close and h.our_state is h11.DONE and h.their_state is h11.DONE

    def _encode(self, response: Response, *, close: bool, head_only: bool) -> bytes:
        h = self._h11
        body = response.body
        status = response.status
        headers: list[tuple[bytes, bytes]] = []
        if status >= 200 and status not in (204, 304):
            headers.append((b"content-type", response.content_type.encode("latin-1")))
            headers.append((b"content-length", str(len(body)).encode()))
        else:
            body = b""
        headers.append((b"date", http_date()))
        headers.append((b"server", b"gpufleet"))
        for name, value in response.headers:
            if name.lower() not in ("content-length", "transfer-encoding"):
                headers.append((name.encode("latin-1"), value.encode("latin-1")))
        if close:
            headers.append((b"connection", b"close"))
        parts = [h.send(h11.Response(status_code=status, headers=headers,
                                     reason=reason_phrase(status)))]
        if body and not head_only:
            parts.extend(h.send_with_data_passthrough(h11.Data(data=body)))
        parts.append(h.send(h11.EndOfMessage()))
        return b"".join(parts)

    async def _refuse(self, reject: _Reject) -> None:
        """Answer a rejected request, then close.

        Written without h11: its state machine may already be in ERROR, and the answer
        always closes the connection, so no framing beyond Content-Length is needed.
        """
        response = json_error(reject.status, reject.message)
        try:
            await self._stream.write(encode_closing(response))
        except PeerGone:
            pass  # the client is gone; nothing left to tell it
        _log_access(self._client, self._method, self._path, reject.status, len(response.body),
                    self._started, None)
        if self._state.on_reject is not None:
            self._state.on_reject(reject.status, _clock() - self._started)
        await self._stream.linger_close(self._limits.close_linger_s)


def _log_access(client: str, method: str, path: str, status: int, nbytes: int, started: float,
                key_name: str | None) -> None:
    """``client method path status bytes time key``: the client as resolved (trusted proxies)."""
    if access_log.isEnabledFor(logging.INFO):
        elapsed_ms = (_clock() - started) * 1000
        access_log.info("%s %s %s %d %d %.1fms %s", client, method, path, status, nbytes,
                        elapsed_ms, key_name or "-")

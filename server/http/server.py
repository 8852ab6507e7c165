"""HttpServer: accepts connections, resolves routes, runs middleware and handlers.

Middleware contract
-------------------
``middleware`` is a sequence of ``async def mw(request, call_next) -> Response``;
``call_next(request)`` runs the rest of the chain and the handler. The first middleware
is the outermost. It runs only for requests that matched a route (unknown paths get 404,
wrong methods 405, before any middleware), and ``request.route`` is already set, so auth
middleware reads the required scope from ``request.route.auth`` (None: public route) and
a rate limiter keys on ``request.route.name``. Middleware may raise HttpError (401 with
``WWW-Authenticate``, 429 with ``Retry-After``: its headers are sent) or return its own
Response, and may set ``request.key_name`` / ``account`` / ``scopes`` for handlers and
the access log. Middleware and handler together run under the route's ``timeout_s`` or
else ``limits.handler_timeout_s`` (504 past it); whatever they raise goes through
``errors.error_response``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence

from gpufleet.server.config import Limits
from gpufleet.server.http.connection import READ_CHUNK_BYTES, StreamConnection
from gpufleet.server.http.errors import error_response, json_error
from gpufleet.server.http.forwarded import ClientAddresses
from gpufleet.server.http.protocol import HttpProtocol, ServerState, access_log
from gpufleet.server.http.router import Route, Router
from gpufleet.server.http.types import Handler, Request, Response
from gpufleet.server.http.wire import encode_closing

log = logging.getLogger("gpufleet.http")

Middleware = Callable[[Request, Handler], Awaitable[Response]]
ShutdownCallback = Callable[[], Awaitable[None] | None]
# (route pattern, or "unmatched" / "http" before routing; method; status; seconds)
Observer = Callable[[str, str, int, float], None]
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class HttpServer:
    """An HTTP/1.1 server for one Router, with every limit taken from ``limits``."""

    def __init__(self, router: Router, limits: Limits, *,
                 ssl_context: ssl.SSLContext | None = None,
                 middleware: Sequence[Middleware] = (),
                 on_shutdown: Sequence[ShutdownCallback] = (),
                 addresses: ClientAddresses | None = None,
                 observer: Observer | None = None) -> None:
        """``addresses`` knows the trusted proxies (X-Forwarded-For, no per-address cap);
        ``observer`` is told of every answer (for /metrics); it must not raise or block."""
        self.router = router
        self.observer = observer
        self.limits = limits
        self.ssl_context = ssl_context
        self.middleware = tuple(middleware)
        self.on_shutdown: list[ShutdownCallback] = list(on_shutdown)
        self.addresses = addresses or ClientAddresses()
        self._state = ServerState(addresses=self.addresses,
                                  on_reject=self._observe_reject if observer else None)
        self._per_address: dict[str, int] = {}  # open connections by peer address
        self._server: asyncio.Server | None = None
        self._protocols: dict[HttpProtocol, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # every connection task, refused ones too
        self._chains: dict[Route, Handler] = {}
        self._stopped: asyncio.Future[None] | None = None
        self.address: tuple[str, int] | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8765`` (after start)."""
        if self.address is None:
            raise RuntimeError("server not started")
        scheme = "https" if self.ssl_context else "http"
        host, port = self.address
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"

    @property
    def open_connections(self) -> int:
        return len(self._protocols)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen on ``host:port`` (0 picks a free port) and return the bound address."""
        self._server = await asyncio.start_server(
            self._on_client, host, port, ssl=self.ssl_context, limit=READ_CHUNK_BYTES,
            backlog=max(128, min(self.limits.max_connections, 4096)),
            ssl_handshake_timeout=self.limits.header_timeout_s if self.ssl_context else None,
        )
        sockname = self._server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        log.info("Listening on %s", self.url)
        return self.address

    async def start_unix(self, sock: socket.socket,
                         allow_peer: Callable[[socket.socket], bool] | None = None) -> None:
        """Serve on a bound, listening-ready Unix socket; ``allow_peer`` may refuse a connection.

        The caller creates, secures and later removes the socket file; ``address`` stays
        None (there is no URL). A refused peer is closed before anything is read.
        """
        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if allow_peer is not None and not allow_peer(writer.get_extra_info("socket")):
                writer.close()
                return
            await self._on_client(reader, writer)

        self._server = await asyncio.start_unix_server(
            on_client, sock=sock, limit=READ_CHUNK_BYTES,
            backlog=max(16, min(self.limits.max_connections, 128)))

    async def shutdown(self) -> None:
        """Stop accepting, close idle connections, let in-flight requests finish, then close.

        Requests still running after ``limits.shutdown_grace_s`` are cancelled. Then the
        ``on_shutdown`` callbacks run, in order. Calling it again waits for the first call.
        """
        if self._stopped is None:
            self._stopped = asyncio.ensure_future(self._shutdown())
        await asyncio.shield(self._stopped)

    async def _shutdown(self) -> None:
        self._state.closing = True
        if self._server is not None:
            self._server.close()
        for protocol in list(self._protocols):
            protocol.close_if_idle()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.limits.shutdown_grace_s)
            if pending:
                log.warning("Cancelling %d request(s) still running after %.1fs",
                            len(pending), self.limits.shutdown_grace_s)
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending)
        if self._server is not None:
            await self._server.wait_closed()
        for callback in self.on_shutdown:
            try:
                result = callback()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("Shutdown callback failed")

    async def dispatch(self, request: Request) -> Response:
        """Route ``request``, run middleware and handler under the deadline; never raises."""
        if self.observer is None:
            return await self._dispatch(request)
        started = time.perf_counter()
        response = await self._dispatch(request)
        route = request.route.pattern if request.route is not None else "unmatched"
        # the method is the client's text: an unknown one must not make a series of its own
        method = request.method if request.method in _METHODS else "other"
        self.observer(route, method, response.status, time.perf_counter() - started)
        return response

    def _observe_reject(self, status: int, seconds: float) -> None:
        if self.observer is not None:
            self.observer("http", "other", status, seconds)

    async def _dispatch(self, request: Request) -> Response:
        try:
            route, request.path_params = self.router.match(request.method, request.path)
            request.route = route
            call = self._chains.get(route) or self._chain_for(route)
            deadline = route.timeout_s if route.timeout_s is not None else self.limits.handler_timeout_s
            async with asyncio.timeout(deadline):
                response = await call(request)
            if not isinstance(response, Response):
                raise TypeError(f"{route.name} returned {type(response).__name__}, not Response")
            return response
        except Exception as exc:
            return error_response(exc)

    def _chain_for(self, route: Route) -> Handler:
        call: Handler = route.handler
        for middleware in reversed(self.middleware):
            call = _bind(middleware, call)
        self._chains[route] = call
        return call

    async def _on_client(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        stream = StreamConnection(reader, writer, write_timeout_s=self.limits.write_timeout_s)
        # Counted per peer so that one address holding idle connections cannot use up the
        # server's: a proxy's clients all share its address, so trusted proxies are not capped.
        peer = stream.peer[0] if stream.peer else None
        counted = peer is not None and not self.addresses.trusted(peer)
        try:
            if self._state.closing:
                await stream.close()
            elif len(self._protocols) >= self.limits.max_connections:
                await self._refuse(stream, "Server busy: too many connections")
            elif counted and self._per_address.get(peer, 0) >= self.limits.max_connections_per_address:
                await self._refuse(stream, "Server busy: too many connections from your address")
            else:
                protocol = HttpProtocol(stream, self.limits, self.dispatch, self._state)
                self._protocols[protocol] = task
                if counted:
                    self._per_address[peer] = self._per_address.get(peer, 0) + 1
                try:
                    await protocol.run()
                finally:
                    del self._protocols[protocol]
                    if counted:
                        self._release(peer)
        except Exception:
            log.exception("Connection handler failed")
            stream.abort()
        finally:
            self._tasks.discard(task)

    def _release(self, peer: str) -> None:
        left = self._per_address.get(peer, 1) - 1
        if left > 0:
            self._per_address[peer] = left
        else:
            self._per_address.pop(peer, None)

    async def _refuse(self, stream: StreamConnection, message: str) -> None:
        response = json_error(503, message, {"Retry-After": "1"})
        peer = stream.peer[0] if stream.peer else "-"
        access_log.info("%s - - 503 %d 0.0ms -", peer, len(response.body))
        self._observe_reject(503, 0.0)
        try:
            await stream.write(encode_closing(response))
        except Exception:
            stream.abort()
            return
        await stream.linger_close(self.limits.close_linger_s)


def _bind(middleware: Middleware, call_next: Handler) -> Handler:
    def call(request: Request) -> Awaitable[Response]:
        return middleware(request, call_next)
    return call

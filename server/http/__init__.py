"""A small asyncio + h11 HTTP/1.1 server: connection I/O, the h11 loop, routing.

What the rest of gpufleet imports: ``HttpServer`` (server.py), ``Router`` and ``Route``
(router.py), ``error_response`` and ``json_error`` (errors.py), ``run_until_signalled``
(signals.py) and the handler types ``Request``, ``Response``, ``HttpError`` (types.py).
"""

from gpufleet.server.http.errors import error_response, json_error
from gpufleet.server.http.router import Route, Router
from gpufleet.server.http.server import HttpServer, Middleware
from gpufleet.server.http.signals import run_until_signalled, serve_until_signalled
from gpufleet.server.http.types import Handler, HttpError, Request, Response

__all__ = [
    "Handler",
    "HttpError",
    "HttpServer",
    "Middleware",
    "Request",
    "Response",
    "Route",
    "Router",
    "error_response",
    "json_error",
    "run_until_signalled",
    "serve_until_signalled",
]

"""Router: (method, path pattern) -> handler, with ``{param}`` segments and route metadata.

HEAD is answered by the GET handler of the same path (the server sends the headers and
no body) unless a HEAD route is registered; ``Allow`` lists HEAD wherever GET is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from gpufleet.server.http.types import Handler, HttpError

_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")


@dataclass(frozen=True, eq=False)
class Route:
    """One registered route and what OpenAPI, auth and rate limiting need to know about it."""

    method: str
    pattern: str
    handler: Handler
    name: str
    summary: str = ""
    request_model: type[BaseModel] | None = None
    response_model: type[BaseModel] | None = None
    auth: str | None = None  # required scope; None means no authentication
    params: tuple[str, ...] = field(default=())  # names of the {param} segments, in order
    timeout_s: float | None = None  # this route's deadline; None: limits.handler_timeout_s
    openapi: dict[str, Any] | None = None  # replaces these keys of its OpenAPI operation


class Router:
    """Registers routes and resolves a request's method and decoded path to one of them."""

    def __init__(self) -> None:
        self._routes: list[Route] = []
        self._static: dict[str, dict[str, Route]] = {}  # path -> method -> route
        self._dynamic: list[tuple[tuple[str | None, ...], dict[str, Route]]] = []

    def add(self, method: str, pattern: str, handler: Handler, *, name: str | None = None,
            summary: str = "", request_model: type[BaseModel] | None = None,
            response_model: type[BaseModel] | None = None, auth: str | None = None,
            timeout_s: float | None = None, openapi: dict[str, Any] | None = None) -> Route:
        """Register ``handler`` for ``method`` on ``pattern`` (e.g. ``/v1/keys/{key_id}``).

        ``timeout_s`` replaces the server's ``handler_timeout_s`` for this route only.
        """
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"route timeout must be positive: {timeout_s!r}")
        method = method.upper()
        if not pattern.startswith("/"):
            raise ValueError(f"route pattern must start with '/': {pattern!r}")
        segments = _split(pattern)
        shape: tuple[str | None, ...] = tuple(
            None if _PARAM.match(seg) else seg for seg in segments)
        params = tuple(m.group(1) for seg in segments if (m := _PARAM.match(seg)))
        if len(set(params)) != len(params):
            raise ValueError(f"duplicate parameter name in {pattern!r}")
        route = Route(method=method, pattern=pattern, handler=handler,
                      name=name or f"{method} {pattern}", summary=summary,
                      request_model=request_model, response_model=response_model,
                      auth=auth, params=params, timeout_s=timeout_s, openapi=openapi)
        by_method = self._methods_for(pattern, shape, params)
        if method in by_method:
            raise ValueError(f"route already registered: {method} {pattern}")
        by_method[method] = route
        self._routes.append(route)
        return route

    def get(self, pattern: str, handler: Handler, **meta: object) -> Route:
        return self.add("GET", pattern, handler, **meta)  # type: ignore[arg-type]

    def post(self, pattern: str, handler: Handler, **meta: object) -> Route:
        return self.add("POST", pattern, handler, **meta)  # type: ignore[arg-type]

    def routes(self) -> list[Route]:
        """Every route in registration order (for OpenAPI)."""
        return list(self._routes)

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route for ``method`` and decoded ``path`` and its path parameters.

        Raises HttpError 404 for an unknown path and 405 (with ``Allow``) for a known
        path without that method.
        """
        by_method = self._static.get(path)
        params: dict[str, str] = {}
        if by_method is None:
            by_method, params = self._match_dynamic(path)
        route = by_method.get(method)
        if route is None and method == "HEAD":
            route = by_method.get("GET")
        if route is not None:
            return route, params
        allowed = sorted(set(by_method) | ({"HEAD"} if "GET" in by_method else set()))
        raise HttpError(405, f"Method not allowed: {method} {path}",
                        {"Allow": ", ".join(allowed)})

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        """The handler for ``method`` and ``path`` and its path parameters (see ``match``)."""
        route, params = self.match(method, path)
        return route.handler, params

    def _methods_for(self, pattern: str, shape: tuple[str | None, ...],
                     params: tuple[str, ...]) -> dict[str, Route]:
        if not params:
            return self._static.setdefault(pattern, {})
        for known_shape, by_method in self._dynamic:
            if known_shape == shape:
                existing = next(iter(by_method.values()))
                if existing.params != params:
                    raise ValueError(f"{pattern!r} clashes with {existing.pattern!r}")
                return by_method
        by_method = {}
        self._dynamic.append((shape, by_method))
        return by_method

    def _match_dynamic(self, path: str) -> tuple[dict[str, Route], dict[str, str]]:
        segments = _split(path)
        for shape, by_method in self._dynamic:
            if len(shape) != len(segments):
                continue
            values = []
            for want, seg in zip(shape, segments, strict=True):
                if want is None:
                    if not seg:
                        break
                    values.append(seg)
                elif want != seg:
                    break
            else:
                names = next(iter(by_method.values())).params
                return by_method, dict(zip(names, values, strict=True))
        raise HttpError(404, f"Not found: {path}")


def _split(path: str) -> list[str]:
    return path[1:].split("/")

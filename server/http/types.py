"""Request, Response and HttpError: what handlers see and return."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from gpufleet.server.http.nesting import nested_deeper_than

if TYPE_CHECKING:
    from gpufleet.server.http.router import Route

JSON = "application/json"


class HttpError(Exception):
    """Raised by handlers (and the server) to answer ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclass(slots=True)
class Request:
    method: str
    target: str  # as sent: path and query
    path: str  # decoded path without the query
    query: dict[str, str]  # last value wins
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes = b""
    client: tuple[str, int] | None = None  # the TCP peer
    # The client's address: the peer, or behind a trusted proxy what X-Forwarded-For says.
    remote: str | None = None
    path_params: dict[str, str] = field(default_factory=dict)
    # Set by auth for the access log and for handlers: the key's name and account, never its secret.
    key_name: str | None = None
    account: str | None = None
    scopes: frozenset[str] = frozenset()
    # The matched route (its name, auth scope, models), set by the server before middleware runs.
    route: Route | None = None
    # limits.max_json_depth: json() refuses bodies nested deeper (the stdlib parser recurses)
    max_json_depth: int = 32

    def nesting_error(self) -> HttpError:
        return HttpError(400, f"Request body is nested too deeply: at most {self.max_json_depth} levels")

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        """The body as JSON: 415 unless the content type is JSON, 400 when malformed or
        nested deeper than ``max_json_depth``.

        NaN and Infinity are rejected: JSON has no such numbers.
        """
        ctype = (self.header("content-type") or "").split(";", 1)[0].strip().lower()
        if ctype != JSON and not ctype.endswith("+json"):
            raise HttpError(415, "Content-Type must be application/json")
        if nested_deeper_than(self.body, self.max_json_depth):
            raise self.nesting_error()
        try:
            return json.loads(self.body, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"Malformed JSON body: {exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = JSON
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(cls, payload: BaseModel | Any, status: int = 200,
             headers: list[tuple[str, str]] | None = None) -> Response:
        if isinstance(payload, BaseModel):
            body = payload.model_dump_json(by_alias=True).encode()
        else:
            body = json.dumps(payload, separators=(",", ":")).encode()
        return cls(status=status, body=body, headers=list(headers or []))

    @classmethod
    def text(cls, text: str, content_type: str = "text/plain; charset=utf-8", status: int = 200,
             headers: list[tuple[str, str]] | None = None) -> Response:
        return cls(status=status, body=text.encode(), content_type=content_type,
                   headers=list(headers or []))


Handler = Callable[[Request], Awaitable[Response]]

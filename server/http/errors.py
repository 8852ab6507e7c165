"""The one mapping from exceptions to an HTTP status and a JSON ``{"error": ...}`` body."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping

from pydantic import ValidationError

from gpufleet.server.failures import RollupBehindError, StorageFullError
from gpufleet.server.http.types import JSON, HttpError, Response

log = logging.getLogger("gpufleet.http")

# How many validation problems a 400 lists before saying "and N more".
_MAX_LISTED_PROBLEMS = 5
# Retry-After (seconds) of a 507 (the store's disk is full) and a 503 (the rollup is behind).
STORAGE_RETRY_AFTER_S = 30
ROLLUP_RETRY_AFTER_S = 5
STORAGE_FULL_TEXT = ("Insufficient storage: the server cannot write to its store (disk full or "
                     "I/O error); nothing was stored, retry later")
ROLLUP_BEHIND_TEXT = ("The usage rollup is behind and cannot be brought up to date right now; "
                      "retry later")


def json_error(status: int, message: str,
               headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None) -> Response:
    """A ``{"error": message}`` response with ``status``."""
    body = json.dumps({"error": message}, separators=(",", ":")).encode()
    items = headers.items() if isinstance(headers, Mapping) else headers or ()
    return Response(status=status, body=body, content_type=JSON, headers=list(items))


def error_response(exc: BaseException) -> Response:
    """Map any exception a handler (or middleware) raised to the response the client gets.

    HttpError keeps its status, message and headers; a handler deadline (TimeoutError)
    is 504; a pydantic ValidationError is 400 listing field paths and reasons (never the
    input values, which may hold secrets); a store that cannot write is 507 and a rollup
    that cannot catch up 503, both with ``Retry-After`` (the store logs those, once per
    episode); anything else is a 500 whose traceback is logged here and never sent.
    """
    if isinstance(exc, HttpError):
        return json_error(exc.status, exc.message, exc.headers)
    if isinstance(exc, StorageFullError):
        return json_error(507, STORAGE_FULL_TEXT, {"Retry-After": str(STORAGE_RETRY_AFTER_S)})
    if isinstance(exc, RollupBehindError):
        return json_error(503, ROLLUP_BEHIND_TEXT, {"Retry-After": str(ROLLUP_RETRY_AFTER_S)})
    if isinstance(exc, TimeoutError):
        return json_error(504, "Request took too long to process")
    if isinstance(exc, ValidationError):
        return json_error(400, validation_message(exc))
    log.error("Unhandled error in request handler", exc_info=exc)
    return json_error(500, "Internal server error")


def validation_message(exc: ValidationError) -> str:
    """A readable one-line summary of a ValidationError: ``path: reason; ...``."""
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in err["loc"]) or "body"
        problems.append(f"{where}: {err['msg']}")
    listed = "; ".join(problems[:_MAX_LISTED_PROBLEMS])
    if len(problems) > _MAX_LISTED_PROBLEMS:
        listed += f"; and {len(problems) - _MAX_LISTED_PROBLEMS} more"
    return f"Invalid request: {listed}"

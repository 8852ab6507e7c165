"""Bytes on the wire shared by the h11 loop and the server: Date, reason phrases, closing answers."""

from __future__ import annotations

import http
import time
from email.utils import formatdate

from gpufleet.server.http.types import Response


def headers_are_safe(response: Response) -> bool:
    """False when a header would break the response framing or cannot be encoded."""
    for name, value in [*response.headers, ("content-type", response.content_type)]:
        text = name + value
        if "\r" in text or "\n" in text or "\0" in text:
            return False
        if not text.isascii() and max(map(ord, text)) > 255:
            return False
    return True


_REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in http.HTTPStatus}


def reason_phrase(status: int) -> bytes:
    return _REASONS.get(status, b"")


_date_cache: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """The Date header value, formatted at most once per second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode())
    return _date_cache[1]


def encode_closing(response: Response) -> bytes:
    """A complete ``Connection: close`` response without an h11 state machine.

    For answers that end the connection: rejected requests (h11 may be in ERROR by then)
    and connections refused before any byte is read (too many connections).
    """
    head = (f"HTTP/1.1 {response.status} {reason_phrase(response.status).decode()}\r\n"
            f"content-type: {response.content_type}\r\n"
            f"content-length: {len(response.body)}\r\n"
            f"date: {http_date().decode()}\r\n"
            "server: gpufleet\r\nconnection: close\r\n\r\n")
    return head.encode("latin-1") + response.body

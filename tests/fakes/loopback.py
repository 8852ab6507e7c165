"""A JSON-over-HTTP fake runtime on 127.0.0.1:0, served from a thread.

Subclasses implement ``handle(method, path, body) -> (status, payload)`` with
the real runtime's shapes; this class owns the socket, the thread and the wire.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class LoopbackJsonServer:
    thread_name = "fake-runtime"
    bad_json_error = "invalid JSON body"  # the runtime's own words for a body it cannot parse

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name=self.thread_name, daemon=True)
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        raise NotImplementedError

    def encode(self, payload: Any) -> tuple[bytes, str | None]:
        """The response body and its content type (None: no Content-Type header)."""
        return json.dumps(payload).encode(), "application/json"


def _handler_for(fake: LoopbackJsonServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                self._reply(400, {"error": fake.bad_json_error})
                return
            self._reply(*fake.handle(method, self.path.split("?", 1)[0], body))

        def _reply(self, status: int, payload: Any) -> None:
            data, content_type = fake.encode(payload)
            self.send_response(status)
            if content_type:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output quiet

    return Handler

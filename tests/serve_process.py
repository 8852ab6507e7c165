"""Test support: ``gpufleet serve`` / ``simulate`` in a subprocess, its URL read from its output."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

STARTUP_TIMEOUT_S = 30.0
_LISTENING = re.compile(r"gpufleet serving (http\S+)")


@dataclass
class ServeProcess:
    proc: subprocess.Popen[str]
    url: str
    lines: list[str] = field(default_factory=list)  # everything it wrote to stderr so far
    _queue: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def wait_exit(self, timeout_s: float = 30.0) -> int:
        code = self.proc.wait(timeout=timeout_s)
        self.drain()
        return code

    def drain(self, timeout_s: float = 0.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            if line is None:
                return
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)


def _pump(stream: object, sink: queue.Queue[str | None]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        sink.put(line)
    sink.put(None)


def start_serve(db: Path, *extra: str, open_files: tuple[int, int] | None = None,
                env: dict[str, str] | None = None) -> ServeProcess:
    """Start ``gpufleet serve --port 0 --db DB --simulate ...`` and wait until it listens.

    ``open_files``: the server's (soft, hard) open-file limit, as ``ulimit -Sn``/``-Hn`` set.
    ``env``: variables set for the server on top of this process's environment.
    """
    cmd = [sys.executable, "-m", "gpufleet.server.cli", "serve", "--port", "0", "--db", str(db),
           "--simulate", *extra]

    def limit_files() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, open_files)

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                            preexec_fn=limit_files if open_files else None)
    sink: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stderr, sink), daemon=True).start()
    lines: list[str] = []
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            line = sink.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        lines.append(line)
        match = _LISTENING.search(line)
        if match:
            return ServeProcess(proc, match.group(1), lines, sink)
    proc.kill()
    proc.wait()
    raise AssertionError("gpufleet serve did not start:\n" + "".join(lines))

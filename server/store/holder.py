"""Who holds a store: the process behind DuckDB's lock, in words a person can act on."""

from __future__ import annotations

import os

import psutil

# gpufleet's subcommands; a gpufleet process naming none of them is the console (the default)
_COMMANDS = ("agent", "config", "console", "demo", "export", "keys", "report", "serve", "simulate",
             "status")
_MODULE = "gpufleet.server.cli"


def holder_command(pid: int | None) -> str | None:
    """The gpufleet command ``pid`` runs (``serve``, ``console``, ``keys``...), else None."""
    if pid is None:
        return None
    try:
        argv = psutil.Process(pid).cmdline()
    except (psutil.Error, OSError):
        return None
    for at, part in enumerate(argv[:4]):
        if os.path.basename(part) == "gpufleet" or part == _MODULE:
            return next((arg for arg in argv[at + 1:] if arg in _COMMANDS), "console")
    return None


def describe_holder(pid: int | None) -> str:
    """``gpufleet serve (pid 12)``, ``the gpufleet console (pid 12)``, ``process 12 (python3)``."""
    if pid is None:
        return "another process"
    command = holder_command(pid)
    if command == "console":
        return f"the gpufleet console (pid {pid})"
    if command is not None:
        return f"gpufleet {command} (pid {pid})"
    try:
        name = psutil.Process(pid).name()
    except (psutil.Error, OSError):
        return f"process {pid}"
    return f"process {pid} ({name})"

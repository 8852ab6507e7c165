"""What this host knows about a PID the GPU driver reports: name, user, command line."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psutil

log = logging.getLogger("gpufleet.gpu")

UNKNOWN_PROCESS_NAME = "unknown"


@dataclass(frozen=True, slots=True)
class HostProcess:
    name: str
    user: str | None
    command: str | None
    visible: bool


_INVISIBLE = HostProcess(UNKNOWN_PROCESS_NAME, None, None, visible=False)


def describe_process(pid: int) -> HostProcess:
    """Look a PID up with psutil; a PID of another container or a gone one is 'unknown', not an error."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            name = proc.name() or UNKNOWN_PROCESS_NAME
            user = _optional(proc.username)
            cmdline = _optional(proc.cmdline)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        # NoSuchProcess covers PIDs from another PID namespace (containers) and exited ones.
        return _INVISIBLE
    command = " ".join(cmdline) if cmdline else None
    return HostProcess(name=name, user=user, command=command, visible=True)


def _optional(read):
    """One psutil field that this user may not be allowed to read (another user's cmdline)."""
    try:
        return read()
    except psutil.AccessDenied:
        return None
    except KeyError:
        # username() of a UID with no passwd entry (common in containers)
        return None

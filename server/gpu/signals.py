"""Which GPU processes this server may signal, and sending the signal to a real one.

The rules are the purge's process adapter's: only a process this host can see (not one
of another PID namespace), never PID 1 or the server itself, and only the very process
the snapshot listed (its start time guards against a reused PID). The operating system
has the last word: a process of another user needs the server to run as that user or root.
"""

from __future__ import annotations

import os
import signal as signal_module

import psutil

from gpufleet.server.schemas import GpuProcess, SignalName

SIGNALS: dict[str, signal_module.Signals] = {
    "TERM": signal_module.SIGTERM,
    "INT": signal_module.SIGINT,
    "KILL": signal_module.SIGKILL,
}
START_TOLERANCE_S = 1.0  # start times are whole clock ticks; a reused PID starts later than that


class SignalRefused(Exception):
    """The server may not signal this process (a 403); the message says why."""


class ProcessGone(Exception):
    """The process exited, or its PID now names another process (a 404)."""


def signal_refusal(entry: GpuProcess) -> str | None:
    """Why ``entry`` must never be signalled by this server, or None."""
    if not entry.visible:
        return (f"PID {entry.pid} is not visible to this server (another PID namespace, such as "
                "a container): it cannot tell which process that is, so it will not signal it")
    if entry.pid <= 1:
        return f"PID {entry.pid} is the system's init process"
    if entry.pid == os.getpid():
        return f"PID {entry.pid} is this gpufleet server"
    return None


def send_os_signal(entry: GpuProcess, name: SignalName) -> None:
    """Signal the process ``entry`` names, if it is still that process and the OS allows it."""
    refusal = signal_refusal(entry)
    if refusal is not None:
        raise SignalRefused(refusal)
    try:
        proc = psutil.Process(entry.pid)
        if entry.started_at is not None and abs(
                proc.create_time() - entry.started_at.timestamp()) > START_TOLERANCE_S:
            raise ProcessGone(f"PID {entry.pid} exited; the PID now names another process")
        proc.send_signal(SIGNALS[name])
    except psutil.NoSuchProcess:
        raise ProcessGone(f"PID {entry.pid} exited before the signal") from None
    except psutil.AccessDenied:
        raise SignalRefused(
            f"the operating system does not let this server ({_whoami()}) signal PID {entry.pid}"
            f" of user {entry.user or 'unknown'}: run the server as that user or root") from None


def _whoami() -> str:
    try:
        return f"user {psutil.Process().username()}"
    except (KeyError, psutil.Error):
        return f"uid {os.getuid()}"

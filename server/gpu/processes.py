"""What this host knows about the PIDs the GPU driver reports: who, what, how much CPU and memory.

``ProcessInspector.describe`` is called once per snapshot with every GPU PID. What
never changes for a process (name, user, command, start, cgroup) is read once and
kept by identity (PID and start time, so a reused PID is a new process); each
snapshot then reads only CPU time and resident memory. CPU percent is measured
against the previous snapshot's reading of the same process; on first sight it is
the average since the process started, as ``ps`` shows it. Children come from one
scan of /proc, redone at most every ``children_refresh_s``.

A PID /proc does not show is ``visible: false`` with nothing but what NVML knows:
it belongs to another PID namespace, or it exited between the driver's answer and
this lookup. When this server itself runs in a nested PID namespace (a container),
the driver's PIDs are the host's and a PID here with the same number may be an
unrelated process, so a process counts as the GPU's only if it holds an NVIDIA
device open.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import psutil

from gpufleet.server.schemas import ProcessChild

log = logging.getLogger("gpufleet.gpu")

UNKNOWN_PROCESS_NAME = "unknown"
MIB = 1024 * 1024
CHILDREN_REFRESH_S = 5.0  # process trees change slowly; a full /proc scan costs ~15 µs a process
# Below this, CPU time (counted in 10 ms ticks) over the interval is noise: two clients
# polling a few ms apart would read 0 % or 200 %. A closer snapshot repeats the last figure.
CPU_MIN_WINDOW_S = 1.0
CHILDREN_MAX = 16  # a short tree: nearest descendants first
CHILDREN_DEPTH = 2  # children and grandchildren
GPU_DEVICE_PREFIX = "/dev/nvidia"
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True, slots=True)
class HostProcess:
    name: str
    user: str | None
    command: str | None
    visible: bool
    cpu_percent: float | None = None
    host_rss_mb: int | None = None
    started_at: datetime | None = None
    elapsed_s: float | None = None
    cgroup: str | None = None
    container_id: str | None = None
    children: tuple[ProcessChild, ...] | None = None


INVISIBLE = HostProcess(UNKNOWN_PROCESS_NAME, None, None, visible=False)


def clean_text(text: str) -> str:
    """Text from /proc as valid UTF-8: undecodable bytes (kept by surrogateescape) become U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@dataclass(slots=True)
class _Known:
    """A process seen before: what never changes, and the last CPU reading."""

    proc: psutil.Process
    created: float  # psutil create_time: with the PID, the process's identity
    name: str
    user: str | None
    command: str | None
    cgroup: str | None
    container_id: str | None
    cpu_s: float = 0.0
    cpu_at: float | None = None  # monotonic time of cpu_s; None before the first reading
    cpu_percent: float | None = None  # the last figure, repeated within CPU_MIN_WINDOW_S


@dataclass(frozen=True, slots=True)
class _StatLine:
    ppid: int
    name: str
    rss_pages: int


class ProcessInspector:
    """Describes GPU PIDs snapshot after snapshot; not thread-safe (the backend holds its lock)."""

    def __init__(self, *, proc_root: Path = Path("/proc"),
                 monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 children_refresh_s: float = CHILDREN_REFRESH_S,
                 nested_pid_namespace: bool | None = None,
                 gpu_device_prefix: str = GPU_DEVICE_PREFIX) -> None:
        self._proc = proc_root
        self._monotonic = monotonic
        self._wall = wall
        self._children_refresh_s = children_refresh_s
        self._nested = (in_nested_pid_namespace(proc_root) if nested_pid_namespace is None
                        else nested_pid_namespace)
        self._device_prefix = gpu_device_prefix
        self._known: dict[int, _Known] = {}
        self._holds_gpu: dict[tuple[int, float], bool] = {}
        self._tree: dict[int, list[int]] = {}
        self._stat: dict[int, _StatLine] = {}
        self._tree_at: float | None = None
        if self._nested:
            log.info("this server runs in a nested PID namespace: a GPU PID counts as this "
                     "host's only if that process holds %s* open", gpu_device_prefix)

    def describe(self, pids: Iterable[int]) -> dict[int, HostProcess]:
        """Every PID's description; readings kept for PIDs not in ``pids`` are dropped."""
        wanted = set(pids)
        for pid in [p for p in self._known if p not in wanted]:
            del self._known[pid]
        self._holds_gpu = {k: v for k, v in self._holds_gpu.items() if k[0] in wanted}
        now_mono, now_wall = self._monotonic(), self._wall()
        found: dict[int, HostProcess] = {}
        for pid in sorted(wanted):
            found[pid] = self._describe(pid, now_mono, now_wall)
        if any(h.visible for h in found.values()):
            self._refresh_tree(now_mono)
            found = {pid: replace(h, children=self._children_of(pid)) if h.visible else h
                     for pid, h in found.items()}
        return found

    # ------------------------------------------------------------ one process
    def _describe(self, pid: int, now_mono: float, now_wall: float) -> HostProcess:
        known = self._known.get(pid)
        if known is None:
            try:
                known = self._first_sight(pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                # Exited between the driver's answer and now (a zombie included), or never
                # ours to see: another PID namespace, or a /proc mounted with hidepid.
                return INVISIBLE
            if known is None:
                return INVISIBLE
        try:
            with known.proc.oneshot():
                created = known.proc.create_time()
                if created != known.created:  # the PID was reused: another process
                    del self._known[pid]
                    return self._describe(pid, now_mono, now_wall)
                times = known.proc.cpu_times()
                rss = known.proc.memory_info().rss
        except psutil.NoSuchProcess:  # exited since the last snapshot (or is a zombie now)
            self._known.pop(pid, None)
            return INVISIBLE
        except psutil.AccessDenied:
            times, rss = None, None  # another user's process on a hardened /proc
        if times is not None:
            cpu_s = times.user + times.system
            if known.cpu_at is None:
                lifetime = now_wall - known.created
                known.cpu_percent = 100.0 * cpu_s / lifetime if lifetime > 0 else None
                known.cpu_s, known.cpu_at = cpu_s, now_mono
            elif now_mono - known.cpu_at >= CPU_MIN_WINDOW_S:
                known.cpu_percent = (100.0 * max(cpu_s - known.cpu_s, 0.0)
                                     / (now_mono - known.cpu_at))
                known.cpu_s, known.cpu_at = cpu_s, now_mono
        cpu_percent = known.cpu_percent if times is not None else None
        return HostProcess(
            name=known.name, user=known.user, command=known.command, visible=True,
            cpu_percent=None if cpu_percent is None else round(cpu_percent, 1),
            host_rss_mb=None if rss is None else rss // MIB,
            started_at=datetime.fromtimestamp(known.created, UTC),
            elapsed_s=round(max(now_wall - known.created, 0.0), 1),
            cgroup=known.cgroup, container_id=known.container_id,
        )

    def _first_sight(self, pid: int) -> _Known | None:
        """Read what never changes; None when the process is not this host's to describe."""
        proc = psutil.Process(pid)
        with proc.oneshot():
            created = proc.create_time()
            if self._nested and not self._holds_gpu_device(pid, created):
                return None
            name = clean_text(proc.name() or UNKNOWN_PROCESS_NAME)
            user = _optional(proc.username)
            if user is None:
                uids = _optional(proc.uids)
                user = None if uids is None else str(uids.real)  # as ps shows an unnamed UID
            cmdline = _optional(proc.cmdline)
        cgroup = self._cgroup(pid)
        match = _CONTAINER_ID.search(cgroup) if cgroup else None
        known = _Known(proc=proc, created=created, name=name, user=clean_text(user) if user else None,
                       command=clean_text(" ".join(cmdline)) if cmdline else None,
                       cgroup=cgroup, container_id=match.group(0) if match else None)
        self._known[pid] = known
        return known

    def _cgroup(self, pid: int) -> str | None:
        try:
            text = (self._proc / str(pid) / "cgroup").read_bytes().decode("utf-8", "replace")
        except OSError:
            return None
        return parse_cgroup(text)

    def _holds_gpu_device(self, pid: int, created: float) -> bool:
        key = (pid, created)
        if key not in self._holds_gpu:
            self._holds_gpu[key] = _has_open_file(self._proc / str(pid) / "fd", self._device_prefix)
        return self._holds_gpu[key]

    # ------------------------------------------------------------ children
    def _refresh_tree(self, now: float) -> None:
        if self._tree_at is not None and now - self._tree_at < self._children_refresh_s:
            return
        tree: dict[int, list[int]] = {}
        stats: dict[int, _StatLine] = {}
        try:
            entries = os.scandir(self._proc)
        except OSError:
            return
        with entries:
            for entry in entries:
                if not entry.name.isdigit():
                    continue
                line = _read_stat(Path(entry.path) / "stat")
                if line is not None:
                    pid = int(entry.name)
                    stats[pid] = line
                    tree.setdefault(line.ppid, []).append(pid)
        self._tree, self._stat, self._tree_at = tree, stats, now

    def _children_of(self, pid: int) -> tuple[ProcessChild, ...]:
        found: list[ProcessChild] = []
        level = [pid]
        for _ in range(CHILDREN_DEPTH):
            nxt: list[int] = []
            for parent in level:
                for child in sorted(self._tree.get(parent, ())):
                    line = self._stat.get(child)
                    if line is None or len(found) >= CHILDREN_MAX:
                        continue
                    found.append(ProcessChild(pid=child, ppid=parent, name=line.name,
                                              host_rss_mb=line.rss_pages * _PAGE_SIZE // MIB))
                    nxt.append(child)
            level = nxt
        return tuple(found)


def parse_cgroup(text: str) -> str | None:
    """The process's cgroup path: the v2 (unified) one, else the first v1 hierarchy's."""
    first: str | None = None
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        _controllers, _, path = rest.partition(":")
        if not path:
            continue
        if hierarchy == "0":
            return clean_text(path)
        first = first or clean_text(path)
    return first


def _read_stat(path: Path) -> _StatLine | None:
    """ppid, command name and RSS from /proc/PID/stat (the name may hold spaces and parens)."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    open_at, close_at = raw.find(b"("), raw.rfind(b")")
    fields = raw[close_at + 2:].split()
    if open_at < 0 or close_at < open_at or len(fields) < 22:
        return None
    # After the name: state(3) ppid(4) ... rss(24), counted from 1 with pid and name first.
    name = raw[open_at + 1:close_at].decode("utf-8", "replace")
    return _StatLine(ppid=int(fields[1]), name=name, rss_pages=int(fields[21]))


def _has_open_file(fd_dir: Path, prefix: str) -> bool:
    try:
        with os.scandir(fd_dir) as fds:
            for fd in fds:
                try:
                    if os.readlink(fd.path).startswith(prefix):
                        return True
                except OSError:
                    continue
    except OSError:  # not ours to read: cannot tell it is the GPU's process
        return False
    return False


def in_nested_pid_namespace(proc_root: Path = Path("/proc")) -> bool:
    """Whether this process runs in a PID namespace below the host's (NSpid lists more than one)."""
    try:
        status = (proc_root / "self" / "status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            return len(line.split()) > 2
    return False


def _optional(read):
    """One psutil field that this user may not be allowed to read (another user's cmdline)."""
    try:
        return read()
    except psutil.AccessDenied:
        return None
    except KeyError:
        # username() of a UID with no passwd entry (common in containers)
        return None

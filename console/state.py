"""What the console knows about the fleet: pure data, no Textual, no I/O.

The App's message handlers are the only writers: a poll result or failure is
applied here, and screens read rows and histories out of it when they redraw.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from gpufleet.server.schemas import GpuInfo, GpuProcess, GpuStatusResponse, LoadedModel

HISTORY_WINDOW_S = 15 * 60  # the detail screen's graphs cover the last 15 minutes
HISTORY_MIN = 64

SortKey = Literal["node", "memory", "util", "temp", "power", "procs", "holder"]
SORT_KEYS: tuple[SortKey, ...] = ("node", "memory", "util", "temp", "power", "procs", "holder")


class GpuHistory:
    """Ring buffers of one GPU's readings, one entry per poll, sized to the history window."""

    def __init__(self, maxlen: int) -> None:
        self.at: deque[float] = deque(maxlen=maxlen)  # when each reading arrived, POSIX seconds
        # None: the GPU did not report it (drawn as a gap, never as a zero)
        self.util: deque[float | None] = deque(maxlen=maxlen)
        self.memory_mb: deque[float | None] = deque(maxlen=maxlen)
        self.power_w: deque[float | None] = deque(maxlen=maxlen)
        self.temp_c: deque[float | None] = deque(maxlen=maxlen)

    def add(self, gpu: GpuInfo, at: datetime) -> None:
        self.at.append(at.timestamp())
        self.util.append(_reading(gpu.utilization.gpu_percent))
        self.memory_mb.append(None if gpu.lost else float(gpu.memory.used_mb))
        self.power_w.append(_reading(gpu.power_draw_w))
        self.temp_c.append(_reading(gpu.temperature_c))

    def __len__(self) -> int:
        return len(self.at)


def _reading(value: float | None) -> float | None:
    return None if value is None else float(value)


@dataclass
class NodeState:
    """One node as last seen by its poller."""

    name: str
    status: GpuStatusResponse | None = None
    reachable: bool | None = None  # None: not polled yet
    rtt_ms: float | None = None
    last_ok_at: datetime | None = None
    last_error: str | None = None
    histories: dict[int, GpuHistory] = field(default_factory=dict)

    @property
    def simulated(self) -> bool:
        return bool(self.status and self.status.node and self.status.node.simulated)

    def gpu(self, index: int) -> GpuInfo | None:
        if self.status is None:
            return None
        return next((g for g in self.status.gpus if g.index == index), None)

    def processes_on(self, index: int) -> list[GpuProcess]:
        if self.status is None:
            return []
        return [p for p in self.status.processes if p.gpu_index == index]

    def models_on(self, indices: Iterable[int] | None) -> list[LoadedModel]:
        """Loaded models a purge of ``indices`` (None: every GPU) would touch."""
        models = (self.status.models or []) if self.status else []
        if indices is None:
            return list(models)
        wanted = set(indices)
        # A model spread over several GPUs names only its first; the GPUs name their model.
        tags = {g.model_tag for g in (self.status.gpus if self.status else []) if g.index in wanted}
        return [m for m in models if m.gpu_index is None or m.gpu_index in wanted or m.name in tags]


@dataclass(frozen=True, slots=True)
class FleetRow:
    """One line of the fleet table: a node header or one of its GPUs."""

    kind: Literal["node", "gpu"]
    node: NodeState
    gpu: GpuInfo | None = None
    procs: int = 0
    holder: str = ""

    @property
    def key(self) -> tuple[str, int | None]:
        return (self.node.name, self.gpu.index if self.gpu else None)


def holder_of(gpu: GpuInfo, models: list[LoadedModel]) -> str:
    """Who holds a GPU: its team and model when the node says so, else its loaded models."""
    parts = [p for p in (gpu.team_id, gpu.model_tag) if p]
    if not parts:
        parts = sorted({m.name for m in models if m.gpu_index == gpu.index})
    return " / ".join(parts)


def _gpu_sort_value(row: FleetRow, key: SortKey) -> tuple[int, float | str]:
    gpu = row.gpu
    assert gpu is not None
    # Unknown readings sort last whatever the direction's numbers say.
    match key:
        case "node":
            return (0, gpu.index)
        case "memory":
            return (0, gpu.memory.percent_used)
        case "util":
            value = gpu.utilization.gpu_percent
        case "temp":
            value = gpu.temperature_c
        case "power":
            value = gpu.power_draw_w
        case "procs":
            return (0, row.procs)
        case "holder":
            return (0 if row.holder else 1, row.holder)
    return (1, 0.0) if value is None else (0, float(value))


class FleetState:
    """Every node the console polls, in the configured order."""

    def __init__(self, node_names: Iterable[str], *, refresh_s: float) -> None:
        self.nodes: dict[str, NodeState] = {name: NodeState(name) for name in node_names}
        self.refresh_s = refresh_s
        # At least HISTORY_MIN readings: a slow refresh plus polls asked for (ctrl+r) still fill the window.
        self.history_len = max(HISTORY_MIN, int(HISTORY_WINDOW_S / refresh_s) + 1)
        self.version = 0  # bumped on every change, so a screen can skip redundant redraws

    def apply_status(self, name: str, status: GpuStatusResponse, rtt_ms: float, at: datetime) -> None:
        node = self.nodes[name]
        node.status, node.reachable, node.rtt_ms = status, True, rtt_ms
        node.last_ok_at, node.last_error = at, None
        for gpu in status.gpus:
            history = node.histories.get(gpu.index)
            if history is None:
                history = node.histories[gpu.index] = GpuHistory(self.history_len)
            history.add(gpu, at)
        self.version += 1

    def apply_failure(self, name: str, error: str, at: datetime) -> None:
        node = self.nodes[name]
        node.reachable, node.last_error, node.rtt_ms = False, error, None
        self.version += 1

    @property
    def simulated(self) -> bool:
        return any(node.simulated for node in self.nodes.values())

    def counts(self) -> tuple[int, int, int]:
        """(nodes reachable, nodes in all, GPUs seen)."""
        up = sum(1 for n in self.nodes.values() if n.reachable)
        gpus = sum(len(n.status.gpus) for n in self.nodes.values() if n.status)
        return up, len(self.nodes), gpus

    def rows(self, *, sort: SortKey = "node", reverse: bool = False, query: str = "") -> list[FleetRow]:
        """Node rows each followed by their GPU rows, filtered by ``query`` and sorted by ``sort``."""
        needle = query.strip().lower()
        groups: list[tuple[NodeState, list[FleetRow]]] = []
        for node in self.nodes.values():
            gpu_rows = self._gpu_rows(node)
            if needle and not _node_matches(node, needle):
                gpu_rows = [r for r in gpu_rows if _gpu_matches(r, needle)]
                if not gpu_rows:
                    continue
            if sort != "node":
                gpu_rows.sort(key=lambda r: _gpu_sort_value(r, sort), reverse=reverse)
                # Keep unknown readings at the bottom in both directions.
                gpu_rows.sort(key=lambda r: _gpu_sort_value(r, sort)[0])
            groups.append((node, gpu_rows))
        if sort == "node":
            groups.sort(key=lambda g: g[0].name, reverse=reverse)
        else:
            # A node ranks by its leading GPU, so the busiest node comes first.
            def lead(group: tuple[NodeState, list[FleetRow]]) -> tuple[int, float | str]:
                return _gpu_sort_value(group[1][0], sort) if group[1] else (2, 0.0)

            known = [g for g in groups if lead(g)[0] == 0]
            unknown = [g for g in groups if lead(g)[0] != 0]
            known.sort(key=lead, reverse=reverse)
            groups = known + unknown
        rows: list[FleetRow] = []
        for node, gpu_rows in groups:
            rows.append(FleetRow("node", node))
            rows.extend(gpu_rows)
        return rows

    @staticmethod
    def _gpu_rows(node: NodeState) -> list[FleetRow]:
        if node.status is None:
            return []
        models = node.status.models or []
        counts: dict[int | None, int] = {}
        for proc in node.status.processes:
            counts[proc.gpu_index] = counts.get(proc.gpu_index, 0) + 1
        return [
            FleetRow("gpu", node, gpu, counts.get(gpu.index, 0), holder_of(gpu, models))
            for gpu in node.status.gpus
        ]


def _node_matches(node: NodeState, needle: str) -> bool:
    hostname = node.status.node.hostname if node.status and node.status.node else ""
    return needle in node.name.lower() or needle in hostname.lower()


def _gpu_matches(row: FleetRow, needle: str) -> bool:
    gpu = row.gpu
    assert gpu is not None
    haystack = [gpu.name, gpu.team_id or "", gpu.model_tag or "", row.holder]
    haystack += [p.name for p in row.node.processes_on(gpu.index)]
    haystack += [p.command or "" for p in row.node.processes_on(gpu.index)]
    haystack += [m.name for m in row.node.models_on([gpu.index])]
    return any(needle in text.lower() for text in haystack)

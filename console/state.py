"""What the console knows about the fleet: pure data, no Textual, no I/O.

The App's message handlers are the only writers: a poll result or failure is
applied here, and screens read rows and histories out of it when they redraw.
A change of a node's health (up, down, auth failed, stale) is returned as an
``Event`` so the App can notify and log it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from gpufleet.console.events import Event, Severity
from gpufleet.console.filter import FleetFilter
from gpufleet.console.thresholds import Levels
from gpufleet.server.schemas import GpuInfo, GpuProcess, GpuStatusResponse, LoadedModel

HISTORY_WINDOW_S = 15 * 60  # the detail screen's graphs cover the last 15 minutes
HISTORY_MIN = 64
STALE_POLLS = 3  # a node is stale only after missing at least this many refreshes
CLEAR_AFTER = 3  # answers in a row without a GPU's trouble before the log says it is gone

SortKey = Literal["node", "memory", "util", "temp", "power", "procs", "holder",
                  "fan", "sm_clock", "pstate", "energy"]
SORT_KEYS: tuple[SortKey, ...] = ("node", "memory", "util", "temp", "power", "procs", "holder")
WIDE_SORT_KEYS: tuple[SortKey, ...] = ("fan", "sm_clock", "pstate", "energy")
ProcSortKey = Literal["node", "gpu", "pid", "user", "gpu_memory", "command", "cpu", "host_rss", "elapsed"]
PROC_SORT_KEYS: tuple[ProcSortKey, ...] = ("gpu_memory", "node", "pid", "user", "command")
WIDE_PROC_SORT_KEYS: tuple[ProcSortKey, ...] = ("cpu", "host_rss", "elapsed")
# Text columns read best A-Z; numbers biggest first.
ASCENDING_FIRST = frozenset({"node", "holder", "pstate", "gpu", "pid", "user", "command"})

NodeHealth = Literal["waiting", "up", "down", "auth", "stale"]
TROUBLE: frozenset[NodeHealth] = frozenset({"down", "auth", "stale"})
HEALTH_WORDS: dict[NodeHealth, str] = {
    "waiting": "waiting", "up": "up", "down": "down", "auth": "auth failed", "stale": "stale",
}


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
    auth_failed: bool = False  # the last failure was the node refusing our token (401/403)
    last_status: int | None = None  # the HTTP status of the last failure, when there was one
    fresh_at: datetime | None = None  # console time when the node's own timestamp last moved on
    health: NodeHealth = "waiting"  # as of the last update_health()
    gpu_trouble: dict[int, dict[str, str]] = field(default_factory=dict)  # as of the last update_health()
    _trouble_of: GpuStatusResponse | None = field(default=None, repr=False)  # the status gpu_trouble is from
    gpu_absent: dict[tuple[int, str], int] = field(default_factory=dict, repr=False)  # answers without a reason
    _procs_of: GpuStatusResponse | None = field(default=None, repr=False)
    _rows_of: GpuStatusResponse | None = field(default=None, repr=False)
    _rows: list[FleetRow] = field(default_factory=list, repr=False)
    _proc_rows_of: GpuStatusResponse | None = field(default=None, repr=False)
    _proc_rows: list[ProcessRow] = field(default_factory=list, repr=False)
    _filter_cache: tuple[object, ...] | None = field(default=None, repr=False)
    _totals: tuple[GpuStatusResponse, tuple[float, ...]] | None = field(default=None, repr=False)
    _procs_by_gpu: dict[int | None, list[GpuProcess]] = field(default_factory=dict, repr=False)
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
        if self._procs_of is not self.status:  # indexed once per answer: filters ask per GPU
            self._procs_by_gpu = {}
            for proc in self.status.processes:
                self._procs_by_gpu.setdefault(proc.gpu_index, []).append(proc)
            self._procs_of = self.status
        return list(self._procs_by_gpu.get(index, ()))  # a copy: callers may sort it

    def models_on(self, indices: Iterable[int] | None) -> list[LoadedModel]:
        """Loaded models a purge of ``indices`` (None: every GPU) would touch."""
        models = (self.status.models or []) if self.status else []
        if indices is None:
            return list(models)
        wanted = set(indices)
        # A model spread over several GPUs names only its first; the GPUs name their model.
        tags = {g.model_tag for g in (self.status.gpus if self.status else []) if g.index in wanted}
        return [m for m in models if m.gpu_index is None or m.gpu_index in wanted or m.name in tags]

    def current_health(self, now: datetime, stale_after: timedelta) -> NodeHealth:
        if self.reachable is None:
            return "waiting"
        if not self.reachable:
            return "auth" if self.auth_failed else "down"
        if self.fresh_at is not None and now - self.fresh_at > stale_after:
            return "stale"
        return "up"

    @property
    def trouble(self) -> bool:
        return self.health in TROUBLE

    def failure_text(self) -> str:
        """``auth failed: 401`` or ``unreachable``: what the node row and the event log call it."""
        if self.reachable is False and self.auth_failed:
            return f"auth failed: {self.last_status}" if self.last_status else "auth failed"
        if self.reachable is False:
            return "unreachable"
        return "stale" if self.health == "stale" else "up"


@dataclass(frozen=True, slots=True)
class FleetRow:
    """One line of the fleet table: a node header or one of its GPUs."""

    kind: Literal["node", "gpu"]
    node: NodeState
    gpu: GpuInfo | None = None
    procs: int = 0
    holder: str = ""  # the GPU's first workload, ``team / model`` (what the TEAM / MODEL column sorts by)
    collapsed: bool = False  # a node row whose GPU rows are folded away
    shared: tuple[str, ...] = ()  # the other workloads on a shared GPU

    @property
    def workloads(self) -> tuple[str, ...]:
        return (self.holder, *self.shared) if self.holder else ()

    @property
    def key(self) -> tuple[str, int | None]:
        return (self.node.name, self.gpu.index if self.gpu else None)


@dataclass(frozen=True, slots=True)
class ProcessRow:
    """One line of the process view: a GPU process, its node and its GPU."""

    node: NodeState
    proc: GpuProcess
    gpu: GpuInfo | None

    @property
    def key(self) -> tuple[str, int | None, int]:
        return (self.node.name, self.proc.gpu_index, self.proc.pid)


@dataclass(frozen=True, slots=True)
class RowQuery:
    """How the fleet screen wants its rows: sort, filter, grouping and folded nodes."""

    sort: SortKey = "node"
    reverse: bool = False
    query: str = ""
    flat: bool = False
    collapsed: frozenset[str] = frozenset()
    trouble_first: bool = True


def workloads_on(gpu: GpuInfo, processes: list[GpuProcess], models: list[LoadedModel]) -> tuple[str, ...]:
    """Who holds a GPU, one ``team / model`` label per workload; a shared GPU has several.

    The GPU's own team and model come first (what the node says holds it), then those of
    its other processes, biggest GPU memory first; without any, the models loaded on it.
    """
    labels: list[str] = []

    def add(*parts: str | None) -> None:
        label = " / ".join(p for p in parts if p)
        if label and label not in labels:
            labels.append(label)

    add(gpu.team_id, gpu.model_tag)
    for proc in sorted(processes, key=lambda p: -(p.memory_mb or 0)):
        add(proc.team_id, proc.model_tag)
    if not labels:
        for name in sorted({m.name for m in models if m.occupies({gpu.index})}):
            add(name)
    return tuple(labels)


def _pstate_number(pstate: str | None) -> float | None:
    # "P0" is the fastest state: sort by its number, so P0 comes first when ascending.
    if pstate and pstate[1:].isdigit():
        return float(pstate[1:])
    return None


def _gpu_sort_value(row: FleetRow, key: SortKey) -> tuple[int, float | str]:
    gpu = row.gpu
    assert gpu is not None
    # Unknown readings sort last whatever the direction's numbers say.
    value: float | None
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
        case "fan":
            value = gpu.fan_speed_pct
        case "sm_clock":
            value = gpu.sm_clock_mhz
        case "pstate":
            value = _pstate_number(gpu.pstate)
        case "energy":
            value = gpu.energy_j
    return (1, 0.0) if value is None else (0, float(value))


def _sorted_known_first(rows: list[FleetRow], key: SortKey, reverse: bool) -> list[FleetRow]:
    values = [(_gpu_sort_value(r, key), r) for r in rows]
    values.sort(key=lambda v: v[0], reverse=reverse)
    # Keep unknown readings at the bottom in both directions (a stable second sort).
    values.sort(key=lambda v: v[0][0])
    return [r for _, r in values]


class FleetState:
    """Every node the console polls, in the configured order."""

    def __init__(self, node_names: Iterable[str], *, refresh_s: float, levels: Levels | None = None) -> None:
        self.nodes: dict[str, NodeState] = {name: NodeState(name) for name in node_names}
        self.refresh_s = refresh_s
        # At least HISTORY_MIN readings: a slow refresh plus polls asked for (ctrl+r) still fill the window.
        self.history_len = max(HISTORY_MIN, int(HISTORY_WINDOW_S / refresh_s) + 1)
        self.levels = levels or Levels()
        # Stale: the node's readings stopped moving for the configured time, and at least a few polls.
        self.stale_after = timedelta(seconds=max(self.levels.t.stale_after_s, STALE_POLLS * refresh_s))
        self.version = 0  # bumped on every change, so a screen can skip redundant redraws
        self.matched_gpus = 0  # GPUs the last rows() call's filter let through, folded ones included

    def apply_status(self, name: str, status: GpuStatusResponse, rtt_ms: float, at: datetime) -> None:
        node = self.nodes[name]
        previous = node.status
        if previous is None or status.timestamp != previous.timestamp or node.fresh_at is None:
            node.fresh_at = at
        node.status, node.reachable, node.rtt_ms = status, True, rtt_ms
        node.last_ok_at, node.last_error, node.auth_failed = at, None, False
        for gpu in status.gpus:
            history = node.histories.get(gpu.index)
            if history is None:
                history = node.histories[gpu.index] = GpuHistory(self.history_len)
            history.add(gpu, at)
        self.version += 1

    def apply_failure(self, name: str, error: str, at: datetime, *, auth: bool = False,
                      status: int | None = None) -> None:
        node = self.nodes[name]
        node.reachable, node.last_error, node.rtt_ms = False, error, None
        node.auth_failed, node.last_status = auth, status
        self.version += 1

    def update_health(self, now: datetime, only: str | None = None) -> list[Event]:
        """Re-evaluate every node's health (or ``only`` that one's); an event per change.

        GPU trouble is looked at once per answer, so calling this often costs little.
        """
        events: list[Event] = []
        for node in self.nodes.values() if only is None else (self.nodes[only],):
            health = node.current_health(now, self.stale_after)
            if health != node.health:
                before, node.health = node.health, health
                self.version += 1
                event = _health_event(node, before, now)
                if event is not None:
                    events.append(event)
            if node.reachable and node.status is not None and node._trouble_of is not node.status:
                events += self._gpu_events(node, now)
                node._trouble_of = node.status
        return events

    def _gpu_events(self, node: NodeState, now: datetime) -> list[Event]:
        """GPUs that started or stopped throttling, erroring, overheating, or were lost.

        A reason is logged as soon as it appears; it is logged as gone only once it has been
        absent from ``CLEAR_AFTER`` answers in a row, and a hot GPU is gone only below the
        warning temperature, so a GPU hovering at a threshold is one line, not one a poll.
        """
        events: list[Event] = []
        assert node.status is not None
        initial = not node.gpu_trouble and node._trouble_of is None
        for gpu in node.status.gpus:
            trouble = gpu_trouble(gpu, self.levels)
            before = node.gpu_trouble.get(gpu.index, {})
            if "hot" in before and "hot" not in trouble and self.levels.hot(gpu):
                trouble["hot"] = before["hot"]  # between warning and critical: still hot
            where = f"{node.name} GPU {gpu.index}"
            for reason, text in trouble.items():
                node.gpu_absent.pop((gpu.index, reason), None)
                if reason not in before:
                    severity: Severity = "warning" if reason in ("throttled", "hot") else "error"
                    events.append(Event(now, severity, node.name, gpu.index, f"{where}: {text}",
                                        initial=initial))
            kept = dict(trouble)
            for reason in before.keys() - trouble.keys():
                absent = node.gpu_absent.get((gpu.index, reason), 0) + 1
                if absent < CLEAR_AFTER:
                    node.gpu_absent[(gpu.index, reason)] = absent
                    kept[reason] = before[reason]
                    continue
                node.gpu_absent.pop((gpu.index, reason), None)
                events.append(Event(now, "information", node.name, gpu.index,
                                    f"{where}: {TROUBLE_CLEARED[reason]}"))
            node.gpu_trouble[gpu.index] = kept
        return events

    @property
    def simulated(self) -> bool:
        return any(node.simulated for node in self.nodes.values())

    def counts(self) -> tuple[int, int, int]:
        """(nodes reachable, nodes in all, GPUs seen)."""
        up = sum(1 for n in self.nodes.values() if n.reachable)
        gpus = sum(len(n.status.gpus) for n in self.nodes.values() if n.status)
        return up, len(self.nodes), gpus

    def rows(self, query: RowQuery | None = None, /, **kwargs: object) -> list[FleetRow]:
        """Node rows each followed by their GPU rows (or, flat, every GPU in one list), filtered and sorted.

        Down, auth-failed and stale nodes come first when ``trouble_first``; in the flat
        view they stand as node rows above the GPU list, since their readings are old.
        """
        q = query or RowQuery(**kwargs)  # type: ignore[arg-type]
        matcher = FleetFilter(q.query, self.levels)
        groups: list[tuple[NodeState, list[FleetRow]]] = []
        for node in self.nodes.values():
            gpu_rows = self._gpu_rows(node)
            if matcher.active:
                gpu_rows = self._filtered(node, gpu_rows, matcher)
                if not gpu_rows and not matcher.node_matches(node):
                    continue
            groups.append((node, gpu_rows))
        self.matched_gpus = sum(len(rows) for _, rows in groups)
        if q.flat:
            return self._flat(groups, q)
        for _, gpu_rows in groups:
            if q.sort != "node":
                gpu_rows[:] = _sorted_known_first(gpu_rows, q.sort, q.reverse)
        if q.sort == "node":
            groups.sort(key=lambda g: g[0].name, reverse=q.reverse)
        else:
            # A node ranks by its leading GPU, so the busiest node comes first.
            def lead(group: tuple[NodeState, list[FleetRow]]) -> tuple[int, float | str]:
                return _gpu_sort_value(group[1][0], q.sort) if group[1] else (2, 0.0)

            known = sorted((g for g in groups if lead(g)[0] == 0), key=lead, reverse=q.reverse)
            groups = known + [g for g in groups if lead(g)[0] != 0]
        if q.trouble_first:
            groups = [g for g in groups if g[0].trouble] + [g for g in groups if not g[0].trouble]
        rows: list[FleetRow] = []
        for node, gpu_rows in groups:
            folded = node.name in q.collapsed
            rows.append(FleetRow("node", node, collapsed=folded))
            if not folded:
                rows.extend(gpu_rows)
        return rows

    def _flat(self, groups: list[tuple[NodeState, list[FleetRow]]], q: RowQuery) -> list[FleetRow]:
        troubled = [node for node, _ in groups if q.trouble_first and node.trouble]
        gpu_rows = [r for node, rows in groups if node not in troubled for r in rows]
        if q.sort == "node":
            gpu_rows.sort(key=lambda r: (r.node.name, r.gpu.index if r.gpu else -1), reverse=q.reverse)
        else:
            gpu_rows = _sorted_known_first(gpu_rows, q.sort, q.reverse)
        return [*(FleetRow("node", node) for node in sorted(troubled, key=lambda n: n.name)), *gpu_rows]

    def process_rows(self, *, sort: ProcSortKey = "gpu_memory", reverse: bool = True,
                     query: str = "") -> list[ProcessRow]:
        """Every GPU process of every node with an answer, filtered and sorted."""
        matcher = FleetFilter(query, self.levels)
        rows: list[ProcessRow] = []
        for node in self.nodes.values():
            node_rows = self._process_rows(node)
            rows += [r for r in node_rows if matcher.process_matches(r)] if matcher.active else node_rows
        return _sorted_processes(rows, sort, reverse)

    @staticmethod
    def _process_rows(node: NodeState) -> list[ProcessRow]:
        """The node's process rows, built once per answer: a redraw reuses the lines of nodes that did not answer."""
        if node.status is None:
            return []
        if node._proc_rows_of is not node.status:
            gpus = {g.index: g for g in node.status.gpus}
            node._proc_rows = [ProcessRow(node, proc, gpus.get(proc.gpu_index) if proc.gpu_index is not None else None)
                               for proc in node.status.processes]
            node._proc_rows_of = node.status
        return node._proc_rows

    @staticmethod
    def _filtered(node: NodeState, rows: list[FleetRow], matcher: FleetFilter) -> list[FleetRow]:
        """The node's GPU rows the filter lets through, worked out once per answer, health and filter."""
        key = (node.status, node.health, tuple(matcher.words))
        cached = node._filter_cache
        if cached is None or cached[0] is not key[0] or cached[1:3] != key[1:]:
            keep = matcher.gpu_filter(node)
            kept = rows if keep is None else [r for r in rows if keep(r)]
            node._filter_cache = (node.status, node.health, tuple(matcher.words), kept)
            return list(kept)
        return list(cached[3])

    @staticmethod
    def _gpu_rows(node: NodeState) -> list[FleetRow]:
        """A new list of the node's GPU rows (the rows themselves are built once per answer)."""
        if node.status is None:
            return []
        if node._rows_of is not node.status:
            models = node.status.models or []
            counts: dict[int | None, int] = {}
            for proc in node.status.processes:
                counts[proc.gpu_index] = counts.get(proc.gpu_index, 0) + 1
            node._rows = []
            for gpu in node.status.gpus:
                labels = workloads_on(gpu, node.processes_on(gpu.index), models)
                node._rows.append(FleetRow("gpu", node, gpu, counts.get(gpu.index, 0),
                                           labels[0] if labels else "", shared=labels[1:]))
            node._rows_of = node.status
        return list(node._rows)


def _sorted_processes(rows: list[ProcessRow], sort: ProcSortKey, reverse: bool) -> list[ProcessRow]:
    def value(row: ProcessRow) -> tuple[int, float | str]:
        proc = row.proc
        match sort:
            case "gpu_memory":
                return (1, 0.0) if proc.memory_mb is None else (0, float(proc.memory_mb))
            case "node":
                return (0, f"{row.node.name}\0{proc.gpu_index if proc.gpu_index is not None else -1:08d}")
            case "gpu":
                return (0, float(proc.gpu_index if proc.gpu_index is not None else -1))
            case "pid":
                return (0, float(proc.pid))
            case "user":
                return (0, proc.user) if proc.user else (1, "")
            case "command":
                return (0, proc.command or proc.name)
            case "cpu":
                return (1, 0.0) if proc.cpu_percent is None else (0, proc.cpu_percent)
            case "host_rss":
                return (1, 0.0) if proc.host_rss_mb is None else (0, float(proc.host_rss_mb))
            case "elapsed":
                return (1, 0.0) if proc.elapsed_s is None else (0, proc.elapsed_s)
        return (1, 0.0)

    # Ties keep a stable order: node, GPU, PID.
    rows = sorted(rows, key=lambda r: (r.node.name, r.proc.gpu_index or 0, r.proc.pid))
    rows.sort(key=value, reverse=reverse)
    return sorted(rows, key=lambda r: value(r)[0])


TROUBLE_CLEARED = {
    "lost": "back (no longer lost)", "throttled": "no longer throttling", "ecc": "ECC errors cleared",
    "faults": "memory faults and XID errors cleared", "hot": "cooled below the critical temperature",
}


def gpu_trouble(gpu: GpuInfo, levels: Levels) -> dict[str, str]:
    """What the event log tracks on a GPU, reason -> words (memory and power fill up too often to log)."""
    trouble: dict[str, str] = {}
    if gpu.lost:
        return {"lost": "GPU is lost"}
    throttling = levels.throttle_reasons(gpu)
    if throttling:
        trouble["throttled"] = "throttling: " + ", ".join(r.replace("_", " ") for r in throttling)
    ecc = gpu.ecc_errors
    if ecc is not None and levels.ecc_level(gpu) != "ok":
        uncorrected = ecc.volatile_uncorrected or 0
        trouble["ecc"] = (f"{uncorrected} uncorrected ECC error(s)" if uncorrected >= levels.t.ecc_uncorrected_crit
                          else f"{ecc.volatile_corrected} corrected ECC errors")
    if levels.memory_faults(gpu):
        faults = [p for p in gpu.health_problems() if not p.startswith(("throttling", "GPU is lost"))
                  and "ECC" not in p]
        trouble["faults"] = "; ".join(faults) or "memory faults"
    if levels.temp(gpu.temperature_c) == "crit":
        trouble["hot"] = f"{gpu.temperature_c}°C, at or over {levels.t.temp_crit_c:g}°C"
    return trouble


def _health_event(node: NodeState, before: NodeHealth, now: datetime) -> Event | None:
    """The event a change of health raises; the first answer of a node raises none."""
    health = node.health
    if health == "up":
        if before == "waiting":
            return None
        return Event(now, "information", node.name, None, f"{node.name} is back up (was {HEALTH_WORDS[before]})",
                     "up")
    if health == "down":
        reason = f": {node.last_error}" if node.last_error else ""
        return Event(now, "error", node.name, None, f"{node.name} is unreachable{reason}", "down")
    if health == "auth":
        return Event(now, "error", node.name, None,
                     f"{node.name}: {node.failure_text()} (the node refuses the console's token)", "auth")
    if health == "stale":
        since = f": no new readings since {node.fresh_at:%H:%M:%S}Z" if node.fresh_at else ""
        return Event(now, "warning", node.name, None, f"{node.name} is stale{since}", "stale")
    return None

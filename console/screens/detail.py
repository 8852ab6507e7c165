"""One GPU in detail: graphs of the last 15 minutes, clocks, P-state and its processes.

Laid out for 80x24 first: the header, the graphs and the facts have fixed
heights, and the process table takes every row left (it scrolls itself), so
GPU MEM and several processes are always on screen. Taller terminals get
taller graphs.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from rich.cells import cell_len
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Static

from gpufleet.console.state import HISTORY_WINDOW_S, FleetState, GpuHistory, NodeState, workloads_on
from gpufleet.console.widgets.badges import SimulatedBadge, set_text
from gpufleet.console.widgets.footer import ConsoleFooter
from gpufleet.console.widgets.format import (
    MEMORY_PCT,
    MEMORY_UNIT,
    POWER_PCT_OF_LIMIT,
    TEMP_C,
    ago,
    rtt,
    short_gpu_name,
    workloads_text,
)
from gpufleet.console.widgets.gpu_facts import clocks_line, health_line, link_line
from gpufleet.console.widgets.gpu_process_table import GpuProcessTable
from gpufleet.console.widgets.history_graph import HistoryGraph, Series
from gpufleet.console.widgets.memory_bar import MemoryBar
from gpufleet.server.schemas import GpuInfo

TALL_FROM = 32  # rows: from here the graphs get taller
WIDE_FROM = 160  # columns: from here the four graphs stand in one row
POLLS_HELD = 2.0  # a reading stands for this many poll intervals, then the graph shows a gap


def _esc(text: str) -> str:
    """Escape markup in text that came from a server (team and model names)."""
    return text.replace("[", r"\[")


def window_name(seconds: float) -> str:
    """``last 15 min``: the graphs' window in words."""
    return f"last {seconds / 60:g} min" if seconds >= 60 else f"last {seconds:g} s"


def gpu_facts(gpu: GpuInfo) -> str:
    """The fact lines under the graphs: clocks, health, host link and video engines."""
    return "\n".join([clocks_line(gpu), health_line(gpu), link_line(gpu)])


def _series(gpu: GpuInfo | None) -> dict[str, Series]:
    """The four graphs; the power graph's colours are shares of this GPU's limit."""
    limit = gpu.power_limit_w if gpu and gpu.power_limit_w else None
    power_levels = (limit * POWER_PCT_OF_LIMIT[0] / 100, limit * POWER_PCT_OF_LIMIT[1] / 100) if limit else None
    total_mb = gpu.memory.total_mb if gpu else 0
    memory_levels = (total_mb * MEMORY_PCT[0] / 100, total_mb * MEMORY_PCT[1] / 100) if total_mb else None
    return {
        "util": Series("Utilization", lambda v: f"{v:.0f}%", lambda v: f"{v:.0f}%"),
        "memory": Series("Memory", lambda v: f"{v / 1024:.1f} {MEMORY_UNIT}", lambda v: f"{v / 1024:.0f}G",
                         memory_levels),
        "temp": Series("Temperature", lambda v: f"{v:.0f}°C", lambda v: f"{v:.0f}°", TEMP_C),
        "power": Series("Power", lambda v: f"{v:.0f} W", lambda v: f"{v:.0f}W", power_levels),
    }


class GpuDetailScreen(Screen[None]):
    """Everything the console knows about one GPU of one node."""

    HELP_SECTION = "GPU detail"

    BINDINGS = [
        Binding("escape,backspace", "app.pop_screen", "Back", id="detail.back", tooltip="Back to the fleet"),
        Binding("p", "purge", "Purge", id="detail.purge", tooltip="Purge this GPU's memory"),
        Binding("k", "signal", "Signal", id="detail.signal",
                tooltip="Send TERM, INT or KILL to the process under the cursor, after a confirmation"),
    ]

    def __init__(self, state: FleetState, node: str, gpu_index: int, *,
                 clock: Callable[[], datetime], readonly: bool, mask_rtt: bool = False) -> None:
        super().__init__(id="detail")
        self.state, self.node_name, self.gpu_index = state, node, gpu_index
        self.clock, self.readonly, self.mask_rtt = clock, readonly, mask_rtt
        self._drawn_version = -1
        self._drawn_node: tuple[object, ...] | None = None

    def compose(self) -> ComposeResult:
        series = _series(None)
        with Horizontal(id="detail-bar"):
            yield Static("", id="detail-title", markup=True)
            yield SimulatedBadge(id="detail-simulated")
        yield Static("", id="detail-node")
        # Full width: a UUID is 40 cells and is copied whole.
        yield Static("", id="detail-uuid")
        yield MemoryBar(id="detail-memory")
        yield Static("", id="detail-history-title", classes="section-title")
        with Grid(id="detail-graphs"):
            for key in ("util", "memory", "temp", "power"):
                yield HistoryGraph(series[key], id=f"graph-{key}")
        yield Static("", id="detail-facts")
        yield GpuProcessTable(id="detail-processes")
        yield ConsoleFooter()

    def on_mount(self) -> None:
        self.refresh_fleet(force=True)
        self.query_one(GpuProcessTable).focus()

    def on_screen_resume(self) -> None:
        self.refresh_fleet(force=True)

    def on_resize(self, event: events.Resize) -> None:
        self.set_class(event.size.height >= TALL_FROM, "-tall")
        self.set_class(event.size.width >= WIDE_FROM, "-wide")
        self.refresh_fleet(force=True)  # the title fits the shared GPU's workloads to the width

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # A read-only console has no purge and no signal: hidden, not merely disabled.
        return not (action in ("purge", "signal") and self.readonly)

    def on_key(self, event: events.Key) -> None:
        # Read-only, the signal binding is hidden, so its key arrives here: say why nothing happens.
        if self.readonly and event.key in self._signal_keys():
            event.stop()
            self.action_signal_disabled()

    def _signal_keys(self) -> set[str]:
        keymap: dict[str, str] = getattr(self.app, "_keymap", None) or {}
        keys = keymap.get("detail.signal") or next(
            b.key for b in self.BINDINGS if isinstance(b, Binding) and b.id == "detail.signal")
        return {key.strip() for key in keys.split(",")}

    @property
    def node(self) -> NodeState:
        return self.state.nodes[self.node_name]

    def refresh_fleet(self, *, force: bool = False) -> None:
        """Redraw from the state; a poll of another node (the usual case) costs one comparison."""
        if not force and self._drawn_version == self.state.version:
            return
        try:
            self._redraw(force)
        except NoMatches:
            # The app's redraw timer fired while this screen was being taken down (at exit):
            # its widgets are already gone and there is nothing left to draw.
            return

    def _redraw(self, force: bool) -> None:
        self._drawn_version = self.state.version
        node = self.node
        # Whatever another node did, this screen only changes when its own node does (or,
        # while its node is down, as the age of the last readings grows).
        seen = (node.status, node.reachable, node.last_ok_at, node.last_error, node.rtt_ms)
        if not force and node.reachable and seen == self._drawn_node:
            return
        self._drawn_node = seen
        gpu = node.gpu(self.gpu_index)
        set_text(self.query_one("#detail-title", Static), self._title(gpu), layout=False)
        self.query_one(SimulatedBadge).set_on(node.simulated)
        set_text(self.query_one("#detail-node", Static), self._node_line(node), layout=False)
        history = node.histories.get(self.gpu_index)
        stale_age = None if node.reachable else ago(node.last_ok_at, self.clock())
        window = window_name(HISTORY_WINDOW_S)
        heading = f"History · {window}" + (f" · [$text-warning]last reading {stale_age}[/]" if stale_age else "")
        set_text(self.query_one("#detail-history-title", Static), heading, layout=False)
        if gpu is None:
            self.query_one(GpuProcessTable).show([])
            return
        set_text(self.query_one("#detail-uuid", Static), f"[$text-muted]UUID[/] {gpu.uuid or '—'}",
                 layout=False)
        self.query_one(MemoryBar).show(gpu.memory.used_mb, gpu.memory.total_mb)
        if history is not None:
            self._show_graphs(gpu, history, stale_age)
        facts = gpu_facts(gpu)
        if stale_age:
            facts = f"[$text-warning]as of {stale_age}[/] " + facts
        set_text(self.query_one("#detail-facts", Static), facts)
        self.query_one(GpuProcessTable).show(node.processes_on(self.gpu_index))

    def _title(self, gpu: GpuInfo | None) -> str:
        """``node · GPU 3 · L40S · team / model``: every workload of a shared GPU, or ``+N`` when they do not fit."""
        name = short_gpu_name(gpu.name) if gpu else "unknown GPU"
        title = f"{self.node_name} · GPU {self.gpu_index} · {name}"
        node = self.node
        labels = workloads_on(gpu, node.processes_on(self.gpu_index),
                              (node.status.models or []) if node.status else []) if gpu else ()
        if not labels:
            return _esc(title)
        # The bar: the title's padding, the SIMULATED badge, " · " before the workloads.
        room = (self.size.width or self.app.size.width) - 2 - (11 if node.simulated else 0) - cell_len(title) - 3
        return _esc(title) + f" [$text-muted]· {_esc(workloads_text(labels, max(8, room)))}[/]"

    def _show_graphs(self, gpu: GpuInfo, history: GpuHistory, stale_age: str | None) -> None:
        now = self.clock().timestamp()
        hold = POLLS_HELD * self.state.refresh_s
        series = _series(gpu)
        power_top = gpu.power_limit_w or max((v for v in history.power_w if v is not None), default=1.0)
        tops = {"util": 100.0, "memory": float(gpu.memory.total_mb or 1),
                "temp": max([100.0, *(v for v in history.temp_c if v is not None)]),
                "power": power_top}
        values = {"util": history.util, "memory": history.memory_mb, "temp": history.temp_c,
                  "power": history.power_w}
        for key, graph_values in values.items():
            graph = self.query_one(f"#graph-{key}", HistoryGraph)
            graph.series = series[key]
            graph.show(history.at, graph_values, now=now, window_s=HISTORY_WINDOW_S, hold_s=hold,
                       top=tops[key], age=stale_age)

    def _node_line(self, node: NodeState) -> str:
        if node.reachable is None:
            return "waiting for the first answer"
        if not node.reachable:
            return (f"[$text-error]unreachable[/] · last seen {ago(node.last_ok_at, self.clock())}"
                    f" · {_esc(node.last_error or '')} · showing the last readings")
        info = node.status.node if node.status else None
        parts = ["[$text-success]up[/]", rtt(node.rtt_ms, masked=self.mask_rtt)]
        if info is not None:
            if info.hostname != node.name:
                parts.append(f"host {_esc(info.hostname)}")
            parts += [f"driver {info.driver_version or '—'}", f"CUDA {info.cuda_version or '—'}",
                      "simulated" if info.simulated else "NVML"]
        return " · ".join(p for p in parts if p)

    def action_purge(self) -> None:
        if not self.readonly:
            self.app.open_purge(self.node_name, [self.gpu_index])  # type: ignore[attr-defined]

    def action_signal(self) -> None:
        """Confirm a signal to the GPU process under the cursor (a child's row: its GPU process)."""
        if self.readonly:
            return
        row = self.query_one(GpuProcessTable).current_row
        if row is None:
            self.notify("No process on this GPU to signal.", title="Signal", severity="warning")
            return
        proc, child_pid = row
        self.app.open_signal(self.node_name, self.gpu_index, proc, child_pid)  # type: ignore[attr-defined]

    def action_signal_disabled(self) -> None:
        # Notifications are markup: "[console]" unescaped was taken for a tag and vanished.
        self.notify("Signalling processes is disabled: this console is read-only "
                    "(--readonly, or readonly in \\[console]).", title="Read-only", severity="warning", timeout=5)

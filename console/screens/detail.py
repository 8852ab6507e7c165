"""One GPU in detail: sparklines of the last ~15 minutes, clocks, P-state and its processes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Static

from gpufleet.console.state import FleetState, NodeState
from gpufleet.console.widgets.badges import SimulatedBadge, set_text
from gpufleet.console.widgets.footer import ConsoleFooter
from gpufleet.console.widgets.format import MEMORY_UNIT, ago, gb, pct, rtt, short_gpu_name, temp
from gpufleet.console.widgets.memory_bar import MemoryBar
from gpufleet.console.widgets.sparklines import MetricSpark
from gpufleet.server.schemas import GpuInfo


def _mhz(value: int | None) -> str:
    return "—" if value is None else f"{value} MHz"


def gpu_facts(gpu: GpuInfo) -> str:
    """The facts column: readings, clocks, P-state and holder, every figure with its unit."""
    power = "—" if gpu.power_draw_w is None else f"{gpu.power_draw_w:.0f} W"
    if gpu.power_limit_w:
        power += f" of {gpu.power_limit_w:.0f} W"
    rows = [
        ("Utilization", f"GPU {pct(gpu.utilization.gpu_percent)} · mem {pct(gpu.utilization.memory_percent)}"),
        ("Memory", f"{gb(gpu.memory.used_mb)} / {gb(gpu.memory.total_mb)} {MEMORY_UNIT}"),
        ("Temperature", temp(gpu.temperature_c)),
        ("Power", power),
        ("SM clock", _mhz(gpu.sm_clock_mhz)),
        ("Mem clock", _mhz(gpu.memory_clock_mhz)),
        ("P-state", gpu.pstate or "—"),
        ("Fan", pct(gpu.fan_speed_pct)),
        ("MIG", "on" if gpu.mig_mode else "off" if gpu.mig_mode is False else "—"),
        ("Team", gpu.team_id or "—"),
        ("Model", gpu.model_tag or "—"),
    ]
    if gpu.lost:
        rows.insert(0, ("State", "[$error]GPU is lost[/]"))
    return "\n".join(f"[$text-muted]{label:<12}[/] {value}" for label, value in rows)


class GpuDetailScreen(Screen[None]):
    """Everything the console knows about one GPU of one node."""

    HELP_SECTION = "GPU detail"

    BINDINGS = [
        Binding("escape,backspace", "app.pop_screen", "Back", id="detail.back", tooltip="Back to the fleet"),
        Binding("p", "purge", "Purge", id="detail.purge", tooltip="Purge this GPU's memory"),
    ]

    def __init__(self, state: FleetState, node: str, gpu_index: int, *,
                 clock: Callable[[], datetime], readonly: bool, mask_rtt: bool = False) -> None:
        super().__init__(id="detail")
        self.state, self.node_name, self.gpu_index = state, node, gpu_index
        self.clock, self.readonly, self.mask_rtt = clock, readonly, mask_rtt
        self._drawn_version = -1

    def compose(self) -> ComposeResult:
        with Horizontal(id="detail-bar"):
            yield Static("", id="detail-title")
            yield SimulatedBadge(id="detail-simulated")
        with VerticalScroll(id="detail-body"):
            yield Static("", id="detail-node")
            # Full width: a UUID is 40 cells, wider than the facts column, and is copied whole.
            yield Static("", id="detail-uuid")
            yield MemoryBar(id="detail-memory")
            with Horizontal(id="detail-columns"):
                with Vertical(id="detail-sparks"):
                    yield MetricSpark("Utilization", "%", id="spark-util")
                    yield MetricSpark("Memory", "%", id="spark-memory")
                    yield MetricSpark("Power", " W", id="spark-power")
                    yield MetricSpark("Temperature", "°C", id="spark-temp")
                yield Static("", id="detail-facts")
            yield Static("Processes", classes="section-title")
            yield DataTable(id="detail-processes", cursor_type="row", zebra_stripes=True)
        yield ConsoleFooter()

    def on_mount(self) -> None:
        table = self.query_one("#detail-processes", DataTable)
        table.add_columns("PID", "USER", "NAME / COMMAND", "GPU MEM", "TYPE")
        self.refresh_fleet(force=True)

    def on_screen_resume(self) -> None:
        self.refresh_fleet(force=True)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # A read-only console has no purge: hidden, not merely disabled.
        return not (action == "purge" and self.readonly)

    @property
    def node(self) -> NodeState:
        return self.state.nodes[self.node_name]

    def refresh_fleet(self, *, force: bool = False) -> None:
        if not force and self._drawn_version == self.state.version:
            return
        self._drawn_version = self.state.version
        node = self.node
        gpu = node.gpu(self.gpu_index)
        name = short_gpu_name(gpu.name) if gpu else "unknown GPU"
        set_text(self.query_one("#detail-title", Static), f"{self.node_name} · GPU {self.gpu_index} · {name}")
        self.query_one(SimulatedBadge).set_on(node.simulated)
        set_text(self.query_one("#detail-node", Static), self._node_line(node))
        if gpu is None:
            return
        set_text(self.query_one("#detail-uuid", Static), f"[$text-muted]UUID[/] {gpu.uuid or '—'}")
        self.query_one(MemoryBar).show(gpu.memory.used_mb, gpu.memory.total_mb)
        history = node.histories.get(self.gpu_index)
        if history is not None:
            self.query_one("#spark-util", MetricSpark).show(history.util, 100)
            self.query_one("#spark-memory", MetricSpark).show(history.memory_pct, 100)
            self.query_one("#spark-power", MetricSpark).show(history.power_w, gpu.power_limit_w or max(history.power_w, default=1))
            self.query_one("#spark-temp", MetricSpark).show(history.temp_c, 100)
        set_text(self.query_one("#detail-facts", Static), gpu_facts(gpu))
        self._fill_processes(node)

    def _node_line(self, node: NodeState) -> str:
        if node.reachable is None:
            return "waiting for the first answer"
        if not node.reachable:
            return (f"[$error]unreachable[/] · last seen {ago(node.last_ok_at, self.clock())}"
                    f" · {node.last_error or ''} · showing the last readings")
        info = node.status.node if node.status else None
        parts = ["[$success]up[/]", rtt(node.rtt_ms, masked=self.mask_rtt)]
        if info is not None:
            parts += [f"host {info.hostname}", f"driver {info.driver_version or '—'}",
                      f"CUDA {info.cuda_version or '—'}", f"backend {info.backend}"]
        return " · ".join(p for p in parts if p)

    def _fill_processes(self, node: NodeState) -> None:
        table = self.query_one("#detail-processes", DataTable)
        table.clear()
        processes = node.processes_on(self.gpu_index)
        name_width = max(16, self.size.width - 48)  # keep GPU MEM and TYPE on screen
        for proc in sorted(processes, key=lambda p: -(p.memory_mb or 0)):
            name = proc.command or proc.name
            if not proc.visible:
                name = f"{proc.name} (not visible to this host)"
            if len(name) > name_width:
                name = name[: name_width - 1] + "…"
            memory = f"{gb(proc.memory_mb)} {MEMORY_UNIT}" if proc.memory_mb is not None else "—"
            table.add_row(str(proc.pid), proc.user or ("?" if not proc.visible else "—"),
                          name, memory, proc.type or "—")
        if not processes:
            table.add_row("", "", "no processes on this GPU", "", "")

    def action_purge(self) -> None:
        if not self.readonly:
            self.app.open_purge(self.node_name, [self.gpu_index])  # type: ignore[attr-defined]

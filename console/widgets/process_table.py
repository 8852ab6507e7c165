"""The process table: every GPU process of every node, one line each (biggest GPU memory first)."""

from __future__ import annotations

from collections.abc import Hashable
from functools import lru_cache

from rich.segment import Segment
from textual.binding import Binding

from gpufleet.console.state import ProcessRow
from gpufleet.console.widgets.format import MEMORY_UNIT, gb
from gpufleet.console.widgets.line_table import Column, LineTable, fit, fit_middle

COMPACT_BELOW = 100
WIDE_FROM = 160


def running_time(seconds: float | None) -> str:
    """ps-style elapsed time: ``4:05``, ``2:04:05``, ``3-02:04:05``."""
    if seconds is None:
        return "—"
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@lru_cache(maxsize=64)
def process_layout(width: int) -> tuple[Column, ...]:
    """Columns for ``width`` cells; the command takes what is left."""
    compact = width < COMPACT_BELOW
    fixed = [
        Column("node", "NODE", 12 if compact else 16, name="node"),
        Column("gpu", "GPU", 4, ">", name="gpu"),
        Column("pid", "PID", 8, ">", name="pid"),
        Column("user", " USER", 10 if compact else 14, name="user"),
        Column("gpu_memory", "GPU MEM", 10 if compact else 11, ">", name="gpu_memory"),
    ]
    if not compact:
        fixed += [
            Column("cpu", "CPU%", 7, ">", name="cpu"),
            Column("host_rss", "HOST MEM", 10, ">", name="host_rss"),
            Column("elapsed", "TIME", 12, ">", name="elapsed"),
        ]
    if width >= WIDE_FROM:
        fixed.append(Column(None, " CONTAINER", 14, name="container"))
    used = sum(c.width for c in fixed)
    return (*fixed, Column("command", " COMMAND", max(8, width - used), name="command"))


class ProcessTable(LineTable[ProcessRow]):
    """Every GPU process of the fleet; Enter opens the detail of the process's GPU."""

    BINDINGS = [Binding("enter", "select", "Details", id="processes.select",
                        tooltip="Open the detail of the GPU the process runs on")]

    @staticmethod
    def row_key(row: ProcessRow) -> Hashable:
        return row.key

    def columns(self, width: int) -> list[Column]:
        return list(process_layout(width))

    def cache_token(self, row: ProcessRow) -> Hashable | None:
        # A process row lives as long as its node's answer; dimmed when the node stops answering.
        return row.node.reachable

    def row_segments(self, row: ProcessRow, width: int) -> list[Segment]:
        proc = row.proc
        stale = not row.node.reachable
        plain = self._style("dim" if stale else None)
        dim = self._style("dim")
        segments: list[Segment] = []
        for column in process_layout(width):
            w = column.width
            match column.name:
                case "node":
                    segments.append(Segment(fit_middle(row.node.name, w - 1) + " ", plain))
                case "gpu":
                    index = "—" if proc.gpu_index is None else str(proc.gpu_index)
                    segments.append(Segment(fit(index, w, ">"), dim))
                case "pid":
                    segments.append(Segment(fit(str(proc.pid), w, ">"), plain))
                case "user":
                    user = proc.user or ("?" if not proc.visible else "—")
                    segments.append(Segment(" " + fit(user, w - 1), plain if proc.user else dim))
                case "gpu_memory":
                    memory = "—" if proc.memory_mb is None else f"{gb(proc.memory_mb)} {MEMORY_UNIT}"
                    segments.append(Segment(fit(memory, w, ">"), plain))
                case "cpu":
                    cpu = "—" if proc.cpu_percent is None else f"{proc.cpu_percent:.0f}"
                    segments.append(Segment(fit(cpu, w, ">"), plain))
                case "host_rss":
                    rss = "—" if proc.host_rss_mb is None else f"{gb(proc.host_rss_mb)} {MEMORY_UNIT}"
                    segments.append(Segment(fit(rss, w, ">"), plain))
                case "elapsed":
                    segments.append(Segment(fit(running_time(proc.elapsed_s), w, ">"), plain))
                case "container":
                    container = (proc.container_id or "")[:12] or "—"
                    segments.append(Segment(" " + fit(container, w - 1), dim))
                case "command":
                    command = proc.command or proc.name
                    if not proc.visible:
                        command = f"{proc.name} (not visible to this host)"
                    segments.append(Segment(" " + fit(command, w - 1), plain if proc.visible else dim))
        return segments

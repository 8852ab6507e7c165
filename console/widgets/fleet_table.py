"""The fleet table: node rows with their GPU rows beneath (grouped), or every GPU in one list (flat).

Columns fit the width: narrow terminals squeeze the name and the bars, and from
160 columns on fan, SM clock, P-state and energy appear. A GPU that throttles
or reports errors is marked beside its index; its readings are coloured by the
configured thresholds.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from datetime import datetime
from functools import lru_cache

from rich.cells import cell_len
from rich.segment import Segment

from gpufleet.console.state import FleetRow
from gpufleet.console.thresholds import Levels
from gpufleet.console.widgets.format import fitted_gpu_name, gb, pct, temp, watts, workloads_text
from gpufleet.console.widgets.line_table import Column, LineTable, fit, fit_middle
from gpufleet.console.widgets.line_table import header_cell as header_cell
from gpufleet.console.widgets.memory_bar import bar_segments
from gpufleet.console.widgets.node_header import node_header_parts

RowKey = tuple[str, int | None]
MEMORY_LABEL_WIDTH = 13  # " 123.4/141.0G "
WIDE_FROM = 160  # columns: fan, SM clock, P-state and energy appear


@lru_cache(maxsize=64)
def _layout(width: int, flat: bool) -> tuple[Column, ...]:
    return tuple(layout(width, flat=flat))


HOLDER_ROOM = 24  # TEAM / MODEL keeps this much while other columns can still give cells up


def layout(width: int, *, flat: bool = False) -> list[Column]:
    """Columns for a table ``width`` cells wide; narrower tables squeeze the bars, then the names.

    The columns never add up to more than ``width`` (from 80 cells on): a flat table between
    100 and 112 columns was wider than the screen, its TEAM / MODEL cut off whole. Cells are
    given up in turn by the bars (both together, down to 5 cells), the power limit, the GPU's
    full name, the bars again, the GPU's short name and the node's.
    """
    full = {"node": 16, "gpu": 18, "memory": 28, "util": 14, "power": 11}
    # Narrow, the bars give up cells rather than the titles their gaps: a right-aligned
    # title needs one cell more than itself for the sort arrow ("UTIL▼TEMP" ran together).
    least = {"node": 12, "gpu": 7 if flat else 10, "memory": 15 if flat else 17, "util": 9, "power": 7}
    widths = dict(full) if flat else {k: v for k, v in full.items() if k != "node"}
    fixed_rest = (4 if flat else 6) + 6 + 7 + (28 if width >= WIDE_FROM else 0)  # index, temp, procs, wide
    over = sum(widths.values()) + fixed_rest + HOLDER_ROOM - width
    bars = {"memory": MEMORY_LABEL_WIDTH, "util": 6}  # the cells of each column that are not bar
    # Bars of 5 cells still read as bars; "A100 80GB" says what "A100-SXM4-80GB" does.
    soft = {"memory": MEMORY_LABEL_WIDTH + 5, "util": 6 + 5}
    steps: list[tuple[str, int] | dict[str, int]] = [soft, ("power", least["power"]), ("gpu", 10),
                                                     least, ("gpu", least["gpu"]), ("node", least["node"])]
    for step in steps:
        if over <= 0:
            break
        if isinstance(step, dict):
            # The two bars give a cell each in turn, the longer first, so neither shrinks alone.
            while over > 0:
                shrinkable = [n for n in bars if widths[n] > max(step[n], least[n])]
                if not shrinkable:
                    break
                name = max(shrinkable, key=lambda n: widths[n] - bars[n])
                widths[name] -= 1
                over -= 1
            continue
        name, floor = step
        if name not in widths or widths[name] <= floor:
            continue
        give = min(over, widths[name] - floor)
        if name == "power":
            give = widths[name] - floor  # the limit ("313/350W") fits whole or not at all
        widths[name] -= give
        over -= give
    lead = (
        [Column("node", "NODE", widths["node"], name="node"), Column(None, "#", 4, name="index")]
        if flat else [Column("node", "NODE", 6, name="index")]
    )
    fixed = [
        *lead,
        Column(None, "GPU", widths["gpu"], name="gpu"),
        Column("memory", "MEMORY", widths["memory"], name="memory"),
        Column("util", "UTIL", widths["util"], ">", name="util"),
        Column("temp", "TEMP", 6, ">", name="temp"),
        Column("power", "POWER", widths["power"], ">", name="power"),
        Column("procs", "PROCS", 7, ">", name="procs"),
    ]
    if width >= WIDE_FROM:
        fixed += [
            Column("fan", "FAN", 5, ">", name="fan"),
            Column("sm_clock", "SM MHz", 8, ">", name="sm_clock"),
            Column("pstate", "PST", 5, ">", name="pstate"),
            Column("energy", "ENERGY", 10, ">", name="energy"),
        ]
    used = sum(c.width for c in fixed)
    room = max(8, width - used)
    # Its title whole, with the sort arrow's cell, even when the column is narrow.
    title = " TEAM / MODEL" if room > len(" TEAM / MODEL") else " TEAM/MODEL"
    return [*fixed, Column("holder", title, room, name="holder")]


def energy(joules: float | None) -> str:
    """The energy counter in kWh (MWh from 1000 kWh on), the unit a power bill uses."""
    if joules is None:
        return "—"
    kwh = joules / 3.6e6
    return f"{kwh / 1000:.2f}MWh" if kwh >= 1000 else f"{kwh:.1f}kWh"


class FleetTable(LineTable[FleetRow]):
    """Every GPU of every node, grouped by node or in one flat list."""

    def __init__(self, *, id: str | None = None, mask_rtt: bool = False, levels: Levels | None = None) -> None:
        super().__init__(id=id)
        self.now: datetime | None = None
        self.mask_rtt = mask_rtt
        self.levels = levels or Levels()
        self.flat = False

    def show_fleet(self, rows: list[FleetRow], *, sort: str, reverse: bool, now: datetime,
                   flat: bool, follow: bool) -> None:
        self.now, self.flat = now, flat
        self.show(rows, sort=sort, reverse=reverse, follow=follow)

    @staticmethod
    def row_key(row: FleetRow) -> Hashable:
        return row.key

    def columns(self, width: int) -> list[Column]:
        return list(_layout(width, self.flat))

    def cache_token(self, row: FleetRow) -> Hashable | None:
        # A GPU row object lives as long as its node's answer; dimmed when the node stops answering.
        # Node rows say how long ago and change with the clock: always drawn afresh.
        return row.node.reachable if row.kind == "gpu" else None

    def layout_token(self) -> Hashable:
        return self.flat

    def row_segments(self, row: FleetRow, width: int) -> list[Segment]:
        if row.kind == "node":
            return self._node_line(row, width)
        return self._gpu_line(row, width)

    def _node_line(self, row: FleetRow, width: int) -> list[Segment]:
        glyph = "▸" if self.flat or row.collapsed else "▾"
        parts = node_header_parts(row.node, width, now=self.now, mask_rtt=self.mask_rtt, glyph=glyph)
        return [Segment(text, self._style(role)) for text, role in parts]

    def _gpu_line(self, row: FleetRow, width: int) -> list[Segment]:
        gpu = row.gpu
        assert gpu is not None
        levels = self.levels
        stale = not row.node.reachable
        dim = self._style("dim")
        plain = self._style(None)

        def tone(level: str) -> str | None:
            return "dim" if stale else (level if level != "ok" else None)

        alarm = levels.alarm(gpu)
        mark = ""
        if {"lost", "ecc", "faults"} & set(alarm.reasons):
            mark, mark_role = "!", "crit"  # one cell in every terminal (✖ is drawn wide by some)
        elif "throttled" in alarm.reasons:
            mark, mark_role = "↓", "warn"
        segments: list[Segment] = []
        for column in _layout(width, self.flat):
            w = column.width
            match column.name:
                case "node":
                    segments.append(Segment(fit_middle(row.node.name, w - 1) + " ", dim if stale else plain))
                case "index":
                    number = fit(f"{gpu.index}" if self.flat else f"  {gpu.index}", w - 2)
                    segments.append(Segment(number, dim))
                    segments.append(Segment(fit(mark, 2), self._style(tone(mark_role) if mark else None)))
                case "gpu":
                    name = fitted_gpu_name(gpu.name, w - 1)
                    if cell_len(name) > w - 1:  # the model alone says more than a cut "A100 …"
                        name = re.split(r"[\s-]+", name)[0]
                    segments.append(Segment(fit(name, w - 1) + " ", dim if stale else plain))
                case "memory":
                    segments += self._memory(row, w, tone)
                case "util":
                    segments += self._util(gpu.utilization.gpu_percent, w, tone)
                case "temp":
                    segments.append(Segment(fit(temp(gpu.temperature_c), w, ">"),
                                            self._style(tone(levels.temp(gpu.temperature_c)))))
                case "power":
                    text = watts(gpu.power_draw_w)
                    if w >= 10 and gpu.power_limit_w:
                        text = f"{text[:-1]}/{gpu.power_limit_w:.0f}W"
                    segments.append(Segment(fit(text, w, ">"), self._style(tone(levels.power(gpu)))))
                case "procs":
                    segments.append(Segment(fit(str(row.procs), w, ">"), self._style(tone("ok"))))
                case "fan":
                    segments.append(Segment(fit(pct(gpu.fan_speed_pct), w, ">"), self._style(tone("ok"))))
                case "sm_clock":
                    text = "—" if gpu.sm_clock_mhz is None else str(gpu.sm_clock_mhz)
                    segments.append(Segment(fit(text, w, ">"), self._style(tone("ok"))))
                case "pstate":
                    segments.append(Segment(fit(gpu.pstate or "—", w, ">"), self._style(tone("ok"))))
                case "energy":
                    segments.append(Segment(fit(energy(gpu.energy_j), w, ">"), self._style(tone("ok"))))
                case "holder":
                    text = workloads_text(row.workloads, w - 1)
                    segments.append(Segment(" " + fit(text, w - 1),
                                            self._style(tone("ok") if row.holder else "dim")))
        return segments

    def _memory(self, row: FleetRow, width: int, tone) -> list[Segment]:  # type: ignore[no-untyped-def]
        gpu = row.gpu
        assert gpu is not None
        if gpu.lost:
            return [Segment(fit("GPU lost", width), self._style("crit"))]
        label = f"{gb(gpu.memory.used_mb)}/{gb(gpu.memory.total_mb)}G"
        bar_width = max(3, width - MEMORY_LABEL_WIDTH)
        role = tone(self.levels.memory(gpu.memory.percent_used)) or "ok"
        fraction = gpu.memory.used_mb / gpu.memory.total_mb if gpu.memory.total_mb else 0.0
        return [*bar_segments(fraction, bar_width, self._style(_bar(role)), self._style("bar-free")),
                Segment(fit(label, width - bar_width - 1, ">") + " ", self._style(tone("ok")))]

    def _util(self, value: int | None, width: int, tone) -> list[Segment]:  # type: ignore[no-untyped-def]
        """A bar and the figure, both in the utilization's threshold colour."""
        text = pct(value)
        bar_width = width - 6  # " 100%" and a leading space
        role = tone(self.levels.util(value)) or "ok"
        fraction = (value or 0) / 100
        return [Segment(" ", self._style(None)),
                *bar_segments(fraction, bar_width, self._style(_bar(role)), self._style("bar-free")),
                Segment(fit(text, 5, ">"), self._style(tone(self.levels.util(value))))]


def _bar(role: str) -> str:
    """A bar's role for a level: the full colour (``dim`` stays dim)."""
    return role if role == "dim" else f"bar-{role}"

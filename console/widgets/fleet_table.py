"""The fleet table: node rows with their GPU rows beneath, drawn line by line.

A Line API widget rather than a DataTable: it only renders the rows on screen,
so a 256-node fleet costs the same per redraw as an 8-node one. It is given
rows (``show``) and never fetches anything; the cursor follows a (node, GPU)
key so it stays on the same GPU when rows re-sort.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from gpufleet.console.state import FleetRow, SortKey
from gpufleet.console.widgets.format import (
    MEMORY_PCT,
    POWER_PCT_OF_LIMIT,
    TEMP_C,
    fitted_gpu_name,
    gb,
    level,
    pct,
    temp,
    watts,
)
from gpufleet.console.widgets.memory_bar import bar_segments
from gpufleet.console.widgets.node_header import node_header_parts

RowKey = tuple[str, int | None]
MEMORY_LABEL_WIDTH = 13  # " 123.4/141.0G "


@dataclass(frozen=True, slots=True)
class Column:
    sort: SortKey | None
    title: str
    width: int
    align: str = "<"


def layout(width: int) -> list[Column]:
    """Columns for a table ``width`` cells wide; narrow tables squeeze the name and the bar."""
    compact = width < 100
    fixed = [
        Column("node", "NODE", 6),
        Column(None, "GPU", 18 if not compact else 10),
        Column("memory", "MEMORY", 28 if not compact else 20),
        Column("util", "UTIL", 6 if not compact else 5, ">"),
        Column("temp", "TEMP", 6 if not compact else 5, ">"),
        Column("power", "POWER", 11 if not compact else 6, ">"),
        Column("procs", "PROCS", 7 if not compact else 6, ">"),
    ]
    used = sum(c.width for c in fixed)
    return [*fixed, Column("holder", " TEAM / MODEL", max(8, width - used))]


def _fit(text: str, width: int, align: str = "<") -> str:
    if cell_len(text) > width:
        return set_cell_size(text[: max(0, width - 1)] + "…", width)
    pad = " " * (width - cell_len(text))
    return pad + text if align == ">" else text + pad


def header_cell(column: Column, sort: SortKey, reverse: bool) -> str:
    """A column title with a one-cell slot for the sort arrow, so sorting never shifts the text.

    The slot sits on the side away from the values, in the padding or the gap between
    columns: just before a right-aligned title, just after a left-aligned one.
    """
    arrow = ("▼" if reverse else "▲") if column.sort is not None and column.sort == sort else " "
    if column.align == ">":
        return _fit(arrow + column.title, column.width, ">")
    if cell_len(column.title) < column.width - 1:
        return _fit(column.title + arrow, column.width - 1) + " "
    return _fit(column.title, column.width - 1) + arrow


class FleetTable(ScrollView, can_focus=True):
    """Every GPU of every node, grouped by node."""

    COMPONENT_CLASSES = {
        "fleet-table--header", "fleet-table--node", "fleet-table--cursor",
        "fleet-table--ok", "fleet-table--warn", "fleet-table--crit",
        "fleet-table--dim", "fleet-table--bar-free", "fleet-table--badge",
    }
    BINDINGS = [
        Binding("up,k", "cursor(-1)", "Up", show=False, id="table.up"),
        Binding("down,j", "cursor(1)", "Down", show=False, id="table.down"),
        Binding("pageup", "page(-1)", "Page up", show=False, id="table.page_up"),
        Binding("pagedown", "page(1)", "Page down", show=False, id="table.page_down"),
        Binding("home", "edge(-1)", "First", show=False, id="table.first"),
        Binding("end", "edge(1)", "Last", show=False, id="table.last"),
        Binding("enter", "select", "Details", id="table.select", tooltip="Open the GPU under the cursor"),
    ]

    cursor = reactive(0, always_update=True)

    class Selected(Message):
        """Enter or a double click on a row."""

        def __init__(self, row: FleetRow) -> None:
            super().__init__()
            self.row = row

    class HeaderClicked(Message):
        def __init__(self, sort: SortKey) -> None:
            super().__init__()
            self.sort = sort

    def __init__(self, *, id: str | None = None, mask_rtt: bool = False) -> None:
        super().__init__(id=id)
        self.rows: list[FleetRow] = []
        self.sort: SortKey = "node"
        self.reverse = False
        self.now: datetime | None = None
        self.mask_rtt = mask_rtt
        self._cursor_key: RowKey | None = None

    # -- data in -------------------------------------------------------------------

    def show(self, rows: list[FleetRow], *, sort: SortKey, reverse: bool, now: datetime) -> None:
        """Replace the rows; the cursor stays on the same node/GPU when it is still shown."""
        self.rows, self.sort, self.reverse, self.now = rows, sort, reverse, now
        self.virtual_size = Size(self.size.width, len(rows) + 1)
        index = next((i for i, r in enumerate(rows) if r.key == self._cursor_key), None)
        if index is None:
            index = min(self.cursor, max(0, len(rows) - 1))
        self.cursor = index
        self.refresh()

    @property
    def current(self) -> FleetRow | None:
        return self.rows[self.cursor] if 0 <= self.cursor < len(self.rows) else None

    def move_to(self, key: RowKey) -> bool:
        index = next((i for i, r in enumerate(self.rows) if r.key == key), None)
        if index is None:
            return False
        self.cursor = index
        return True

    # -- cursor --------------------------------------------------------------------

    def validate_cursor(self, value: int) -> int:
        return min(max(value, 0), max(0, len(self.rows) - 1))

    def watch_cursor(self, value: int) -> None:
        row = self.current
        self._cursor_key = row.key if row else None
        # Line 0 is the header, so row i is on virtual line i + 1.
        top = self.scroll_offset.y
        visible = max(1, self.size.height - 1)
        if value < top:
            self.scroll_to(y=value, animate=False)
        elif value >= top + visible:
            self.scroll_to(y=value - visible + 1, animate=False)
        self.refresh()

    def action_cursor(self, delta: int) -> None:
        self.cursor += delta

    def action_page(self, direction: int) -> None:
        self.cursor += direction * max(1, self.size.height - 2)

    def action_edge(self, direction: int) -> None:
        self.cursor = 0 if direction < 0 else len(self.rows) - 1

    def action_select(self) -> None:
        if self.current is not None:
            self.post_message(self.Selected(self.current))

    def on_resize(self, event: events.Resize) -> None:
        self.virtual_size = Size(event.size.width, len(self.rows) + 1)

    def on_click(self, event: events.Click) -> None:
        if event.y == 0:
            x = event.x
            for column in layout(self.scrollable_content_region.width):
                if x < column.width:
                    if column.sort:
                        self.post_message(self.HeaderClicked(column.sort))
                    return
                x -= column.width
            return
        index = self.scroll_offset.y + event.y - 1
        if 0 <= index < len(self.rows):
            self.cursor = index
            if event.chain >= 2:
                self.action_select()

    # -- drawing -------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        if y == 0:
            return self._header(width)
        index = self.scroll_offset.y + y - 1
        if index >= len(self.rows):
            return Strip.blank(width, self.rich_style)
        row = self.rows[index]
        segments = self._node_line(row, width) if row.kind == "node" else self._gpu_line(row, width)
        strip = Strip(segments).adjust_cell_length(width, self.rich_style)
        if index == self.cursor and self.has_focus:
            strip = strip.apply_style(self.get_component_rich_style("fleet-table--cursor"))
        elif index == self.cursor:
            strip = strip.apply_style(Style(reverse=False, underline=True))
        return strip

    def _style(self, name: str) -> Style:
        return self.get_component_rich_style(f"fleet-table--{name}")

    def _header(self, width: int) -> Strip:
        style = self._style("header")
        segments = [Segment(header_cell(column, self.sort, self.reverse), style) for column in layout(width)]
        return Strip(segments).adjust_cell_length(width, style)

    def _node_line(self, row: FleetRow, width: int) -> list[Segment]:
        parts = node_header_parts(row.node, width, now=self.now, mask_rtt=self.mask_rtt)
        return [Segment(text, self._style(role) if role else None) for text, role in parts]

    def _gpu_line(self, row: FleetRow, width: int) -> list[Segment]:
        gpu = row.gpu
        assert gpu is not None
        stale = not row.node.reachable
        dim = self._style("dim")
        cols = layout(width)
        segments: list[Segment] = [
            Segment(_fit(f"  {gpu.index}", cols[0].width), dim),
            Segment(_fit(fitted_gpu_name(gpu.name, cols[1].width - 1), cols[1].width - 1) + " ", None),
        ]
        if gpu.lost:
            segments.append(Segment(_fit("GPU lost", cols[2].width), self._style("crit")))
        else:
            label = f"{gb(gpu.memory.used_mb)}/{gb(gpu.memory.total_mb)}G"
            bar_width = max(3, cols[2].width - MEMORY_LABEL_WIDTH)
            lvl = "dim" if stale else level(gpu.memory.percent_used, MEMORY_PCT)
            fraction = gpu.memory.used_mb / gpu.memory.total_mb if gpu.memory.total_mb else 0.0
            segments += bar_segments(fraction, bar_width, self._style(lvl), self._style("bar-free"))
            segments.append(Segment(_fit(label, cols[2].width - bar_width - 1, ">") + " ", None))
        power_pct = (
            100 * gpu.power_draw_w / gpu.power_limit_w
            if gpu.power_draw_w is not None and gpu.power_limit_w else None
        )
        power_text = watts(gpu.power_draw_w)
        if cols[5].width >= 10 and gpu.power_limit_w:
            power_text = f"{power_text[:-1]}/{gpu.power_limit_w:.0f}W"
        cells = [
            (pct(gpu.utilization.gpu_percent), None),
            (temp(gpu.temperature_c), level(gpu.temperature_c, TEMP_C)),
            (power_text, level(power_pct, POWER_PCT_OF_LIMIT)),
            (str(row.procs), None),
        ]
        for column, (text, lvl) in zip(cols[3:7], cells, strict=True):
            style = dim if stale else (self._style(lvl) if lvl and lvl != "ok" else None)
            segments.append(Segment(_fit(text, column.width, ">"), style))
        segments.append(Segment(" " + _fit(row.holder or "—", cols[7].width - 1), None if row.holder else dim))
        return segments

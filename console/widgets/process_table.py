"""The GPU detail's process table: one row per GPU process, columns fitted to the width.

Given processes (``show``), it never fetches. Rows are keyed by PID, so the
cursor stays on the same process while the readings change under it, and a
poll that changes no row set only rewrites the cells that changed. Every cell
is ``rich.text.Text`` (never markup: a command line may hold ``[``), unstyled
or styled from this widget's component classes, so both themes colour it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.cells import cell_len
from rich.style import Style
from rich.text import Text
from textual.widgets import DataTable

from gpufleet.console.widgets.format import MEMORY_UNIT, gb
from gpufleet.server.schemas import GpuProcess

NO_PROCESSES = "no processes on this GPU"


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    title: str
    width: int
    right: bool = False


# Fixed columns; the command takes what is left. Widths are of the text, without the cell padding.
PID = Column("pid", "PID", 7, right=True)
USER = Column("user", "USER", 12)
GPU_MEM = Column("gpu_mem", "GPU MEM", 7, right=True)
TYPE = Column("type", "TYPE", 7)
COMMAND_MIN = 12


def columns_for(width: int) -> list[Column]:
    """The columns of a table ``width`` cells wide: GPU MEM always, the command in what is left."""
    fixed = [PID, USER, GPU_MEM]
    if width >= 100:
        fixed.append(TYPE)
    used = sum(c.width + 2 for c in fixed) + 2  # each cell's padding, and the command's
    return [*fixed, Column("command", "NAME / COMMAND", max(COMMAND_MIN, width - used))]


def fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` cells with an ellipsis."""
    if cell_len(text) <= width:
        return text
    cut = text[: max(0, width - 1)]
    while cell_len(cut) > width - 1:
        cut = cut[:-1]
    return cut + "…"


class ProcessTable(DataTable[Text]):
    """The processes of one GPU, biggest GPU memory first."""

    COMPONENT_CLASSES = DataTable.COMPONENT_CLASSES | {"process-table--dim"}
    DEFAULT_CSS = """
    ProcessTable > .process-table--dim { color: $text-muted; }
    """
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._columns: list[Column] = []
        self._processes: list[GpuProcess] = []
        self._row_keys: list[str] = []
        self._cells: dict[str, list[Text]] = {}

    @property
    def current(self) -> GpuProcess | None:
        """The process under the cursor (None on the "no processes" row)."""
        if not self._processes or not 0 <= self.cursor_row < len(self._row_keys):
            return None
        key = self._row_keys[self.cursor_row]
        return next((p for p in self._processes if str(p.pid) == key), None)

    def show(self, processes: Sequence[GpuProcess]) -> None:
        """Show ``processes``; the cursor stays on its PID while that PID is listed."""
        self._processes = sorted(processes, key=lambda p: (-(p.memory_mb or 0), p.pid))
        self._layout()
        rows = {str(p.pid): self._cells_of(p) for p in self._processes}
        if not rows:
            # The command column is last: the note sits where the commands would be.
            rows = {"": [*(Text("") for _ in self._columns[1:]), Text(NO_PROCESSES, style=self._dim)]}
        keys = list(rows)
        if keys == self._row_keys:
            self._update_changed(rows)
            return
        current = self._row_keys[self.cursor_row] if 0 <= self.cursor_row < len(self._row_keys) else None
        self.clear()
        for key, cells in rows.items():
            self.add_row(*cells, key=key)
        self._row_keys, self._cells = keys, rows
        if current in rows:
            self.move_cursor(row=keys.index(current), animate=False)

    def on_resize(self) -> None:
        if self._columns != columns_for(self._content_width()):
            self.show(self._processes)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        if self._columns:
            # A theme change: restyle once the component classes have the new theme's colours.
            self.call_after_refresh(self._restyle)

    def _restyle(self) -> None:
        self._cells = {}
        self.show(self._processes)

    # -- building rows ----------------------------------------------------------------

    @property
    def _dim(self) -> Style:
        # Only the colour: the row's own background (zebra, cursor) shows through.
        return Style(color=self.get_component_rich_style("process-table--dim").color)

    def _content_width(self) -> int:
        # One cell for the vertical scrollbar, whether or not it shows now, so rows never shift.
        return max(0, self.size.width - 1)

    def _layout(self) -> None:
        wanted = columns_for(self._content_width())
        if wanted == self._columns:
            return
        self._columns = wanted
        self.clear(columns=True)
        self._row_keys, self._cells = [], {}
        for column in wanted:
            title = Text(column.title, justify="right" if column.right else "left")
            self.add_column(title, width=column.width, key=column.key)

    def _cells_of(self, proc: GpuProcess) -> list[Text]:
        values = {
            "pid": str(proc.pid),
            "user": proc.user or ("?" if not proc.visible else "—"),
            "gpu_mem": f"{gb(proc.memory_mb)} {MEMORY_UNIT}" if proc.memory_mb is not None else "—",
            "type": proc.type or "—",
            "command": (proc.command or proc.name) if proc.visible
            else f"{proc.name} (not visible to this host)",
        }
        cells = []
        for column in self._columns:
            text = fit(values[column.key], column.width)
            style = self._dim if not proc.visible and column.key != "gpu_mem" else None
            cells.append(Text(text, style=style or "", justify="right" if column.right else "left",
                              no_wrap=True, overflow="ellipsis"))
        return cells

    def _update_changed(self, rows: dict[str, list[Text]]) -> None:
        for key, cells in rows.items():
            old = self._cells.get(key)
            for i, (column, cell) in enumerate(zip(self._columns, cells, strict=True)):
                before = old[i] if old else None
                if before is None or cell.plain != before.plain or cell.style != before.style:
                    self.update_cell(key, column.key, cell)
        self._cells = rows

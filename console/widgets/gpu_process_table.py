"""The GPU detail's process table: GPU processes with their host side and a short tree of children.

Given processes (``show``), it never fetches. Columns are fitted to the width
(GPU MEM always on screen; container, start time and type only where there is
room) and separated by one space, as in htop, so the command keeps most of an
80-column screen. Rows are keyed by PID, so the cursor stays on its process
while the readings change under it, and a poll that changes no row set only
rewrites the cells that changed. Every cell is ``rich.text.Text`` (never markup:
a command line may hold ``[``), unstyled or styled from this widget's component
classes, so both themes colour it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.cells import cell_len
from rich.style import Style
from rich.text import Text
from textual.widgets import DataTable

from gpufleet.server.schemas import GpuProcess, ProcessChild

NO_PROCESSES = "no processes on this GPU"
CHILDREN_SHOWN = 4  # a short tree: the nearest children, then "+N more"
COMMAND_MIN = 12
WIDE_USER_FROM = 110


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    title: str
    width: int  # of the text; each cell adds one space before it
    right: bool = False
    from_width: int = 0  # shown only when the table is at least this wide


COLUMNS = (
    Column("pid", "PID", 7, right=True),
    Column("user", "USER", 10),
    Column("gpu_mem", "GPU MEM", 7, right=True),
    Column("cpu", "CPU", 5, right=True),
    Column("rss", "RSS", 6, right=True),
    Column("elapsed", "ELAPSED", 7, right=True),
    Column("container", "CONTAINER", 14, from_width=110),
    Column("started", "STARTED", 12, from_width=140),
    Column("type", "TYPE", 7, from_width=160),
)


def columns_for(width: int) -> list[Column]:
    """The columns of a table ``width`` cells wide; the command takes what the others leave."""
    fixed = [c for c in COLUMNS if width >= c.from_width]
    if width >= WIDE_USER_FROM:  # room for "data-science" and most login names whole
        fixed = [Column("user", "USER", 14) if c.key == "user" else c for c in fixed]
    used = sum(c.width + 1 for c in fixed) + 1
    return [*fixed, Column("command", "COMMAND", max(COMMAND_MIN, width - used))]


def fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` cells with an ellipsis."""
    if cell_len(text) <= width:
        return text
    cut = text[: max(0, width - 1)]
    while cell_len(cut) > width - 1:
        cut = cut[:-1]
    return cut + "…"


def short_command(command: str, width: int) -> str:
    """The command in ``width`` cells: without the program's folder when the whole line does not fit."""
    if cell_len(command) <= width:
        return command
    program, _, args = command.partition(" ")
    return fit(program.rsplit("/", 1)[-1] + (" " + args if args else ""), width)


def elapsed(seconds: float | None) -> str:
    """``45s``, ``12m``, ``3h05m``, ``2d04h``, ``123d``: a running time in at most six cells."""
    if seconds is None:
        return "—"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s < 100 * 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    return f"{s // 86400}d"


def size(mb: int | None) -> str:
    """MiB as the console's GB (MiB / 1024), one decimal, unit ``G``."""
    return "—" if mb is None else f"{mb / 1024:.1f}G"


def where(proc: GpuProcess) -> str:
    """The container (short ID, as ``docker ps``), else the Slurm job or systemd unit of its cgroup."""
    if proc.container_id:
        return proc.container_id[:12]
    cgroup = proc.cgroup or ""
    job = next((part for part in cgroup.split("/") if part.startswith("job_")), None)
    if job:
        return "slurm " + job.removeprefix("job_")
    last = cgroup.rstrip("/").rsplit("/", 1)[-1]
    return last or "—"


def child_rows(proc: GpuProcess) -> list[tuple[int | None, str, int | None]]:
    """(pid, tree-drawn name, RSS) of a process's children, nearest first, at most CHILDREN_SHOWN."""
    children = proc.children or []
    depth: dict[int, int] = {proc.pid: 0}
    ordered: list[tuple[ProcessChild, int]] = []
    for child in children:  # the server lists them nearest first, so a parent precedes its children
        level = depth.get(child.ppid, 0) + 1
        depth[child.pid] = level
        ordered.append((child, level))
    shown = ordered[:CHILDREN_SHOWN]
    rows: list[tuple[int | None, str, int | None]] = []
    for i, (child, level) in enumerate(shown):
        last = i == len(shown) - 1 and len(ordered) <= CHILDREN_SHOWN
        rows.append((child.pid, "   " * (level - 1) + ("└─ " if last else "├─ ") + child.name,
                     child.host_rss_mb))
    if len(ordered) > CHILDREN_SHOWN:
        rows.append((None, f"└─ +{len(ordered) - CHILDREN_SHOWN} more", None))
    return rows


class GpuProcessTable(DataTable[Text]):
    """The processes of one GPU, biggest GPU memory first, each followed by its children."""

    COMPONENT_CLASSES = DataTable.COMPONENT_CLASSES | {"gpu-process-table--dim"}
    DEFAULT_CSS = """
    GpuProcessTable > .gpu-process-table--dim { color: $text-muted; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True, cell_padding=0)
        self._columns: list[Column] = []
        self._processes: list[GpuProcess] = []
        self._row_keys: list[str] = []
        self._owners: dict[str, tuple[GpuProcess, int | None]] = {}
        self._cells: dict[str, list[Text]] = {}

    @property
    def processes(self) -> list[GpuProcess]:
        """The GPU processes shown, in table order."""
        return list(self._processes)

    @property
    def current(self) -> GpuProcess | None:
        """The GPU process of the row under the cursor (a child's row gives its GPU process)."""
        return self.current_row[0] if self.current_row else None

    @property
    def current_row(self) -> tuple[GpuProcess, int | None] | None:
        """(GPU process, the child's PID when the cursor is on a child's row), or None."""
        if not 0 <= self.cursor_row < len(self._row_keys):
            return None
        return self._owners.get(self._row_keys[self.cursor_row])

    def show(self, processes: Sequence[GpuProcess]) -> None:
        """Show ``processes``; the cursor stays on its row's PID while that PID is listed."""
        self._processes = sorted(processes, key=lambda p: (-(p.memory_mb or 0), p.pid))
        self._layout()
        rows: dict[str, list[Text]] = {}
        owners: dict[str, tuple[GpuProcess, int | None]] = {}
        for proc in self._processes:
            key = str(proc.pid)
            if key in rows:  # a PID listed twice for one GPU (graphics and compute): once is enough
                continue
            rows[key], owners[key] = self._cells_of(proc), (proc, None)
            for n, (pid, name, rss) in enumerate(child_rows(proc)):
                child_key = f"{proc.pid}/{pid if pid is not None else f'more{n}'}"
                rows[child_key] = self._child_cells(pid, name, rss)
                owners[child_key] = (proc, pid)
        if not rows:
            # The command column is last: the note sits where the commands would be.
            rows[""] = [*(Text("") for _ in self._columns[1:]), Text(" " + NO_PROCESSES, style=self._dim)]
        self._owners = owners
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
        if not self.is_attached:  # the detail screen was closed before the refresh came
            return
        self._cells = {}
        self.show(self._processes)

    # -- building rows ----------------------------------------------------------------

    @property
    def _dim(self) -> Style:
        # Only the colour: the row's own background (zebra, cursor) shows through.
        return Style(color=self.get_component_rich_style("gpu-process-table--dim").color)

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
            self.add_column(self._cell(column, column.title), width=column.width + 1, key=column.key)

    @staticmethod
    def _cell(column: Column, text: str, style: Style | str = "") -> Text:
        text = fit(text, column.width)
        pad = " " * (column.width + 1 - cell_len(text)) if column.right else " "
        padded = pad + text if column.right else pad + text + " " * (column.width - cell_len(text))
        return Text(padded, style=style, no_wrap=True)

    def _cells_of(self, proc: GpuProcess) -> list[Text]:
        command = (proc.command or proc.name) if proc.visible else f"{proc.name} (not visible to this host)"
        cpu = proc.cpu_percent
        values: dict[str, str | Callable[[int], str]] = {
            "pid": str(proc.pid),
            "user": proc.user or ("?" if not proc.visible else "—"),
            "gpu_mem": size(proc.memory_mb),
            "cpu": "—" if cpu is None else f"{cpu:.0f}%",
            "rss": size(proc.host_rss_mb),
            "elapsed": elapsed(proc.elapsed_s),
            "container": where(proc) if proc.visible else "—",
            "started": "—" if proc.started_at is None else f"{proc.started_at:%m-%d %H:%M}Z",
            "type": proc.type or "—",
            "command": lambda width: short_command(command, width),
        }
        cells = []
        for column in self._columns:
            value = values[column.key]
            text = value(column.width) if callable(value) else value
            style = self._dim if not proc.visible and column.key != "gpu_mem" else ""
            cells.append(self._cell(column, text, style))
        return cells

    def _child_cells(self, pid: int | None, name: str, rss: int | None) -> list[Text]:
        values = {"pid": "" if pid is None else str(pid), "rss": "" if pid is None else size(rss),
                  "command": name}
        return [self._cell(c, values.get(c.key, ""), self._dim) for c in self._columns]

    def _update_changed(self, rows: dict[str, list[Text]]) -> None:
        for key, cells in rows.items():
            old = self._cells.get(key)
            for i, (column, cell) in enumerate(zip(self._columns, cells, strict=True)):
                before = old[i] if old else None
                if before is None or cell.plain != before.plain or cell.style != before.style:
                    self.update_cell(key, column.key, cell)
        self._cells = rows

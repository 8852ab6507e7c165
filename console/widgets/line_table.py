"""A keyboard table drawn line by line: a header, rows, a cursor, every cell styled from the theme.

A Line API widget rather than a DataTable: it only renders the rows on screen,
so a 500-GPU fleet costs the same per redraw as an 8-GPU one. Subclasses say
which columns fit a width (``columns``) and how a row is drawn
(``row_segments``); they are given rows (``show``) and never fetch anything.

Every segment a subclass returns carries a style from a component class
(``_style``), so no cell falls back to the terminal's own colours. The cursor
is laid over each cell's background, so a whole row lights up, badges aside.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

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

RowT = TypeVar("RowT")

# Roles a subclass may style its cells with; each is a component class ``line-table--<role>``.
ROLES = ("cell", "header", "node", "ok", "warn", "crit", "dim", "bar-ok", "bar-warn", "bar-crit",
         "bar-free", "badge", "cursor", "cursor-blurred")


@dataclass(frozen=True, slots=True)
class Column:
    sort: str | None
    title: str
    width: int
    align: str = "<"
    name: str = ""  # what the row renderer draws in it


def fit(text: str, width: int, align: str = "<") -> str:
    """``text`` in exactly ``width`` cells: padded, or cut with an ellipsis."""
    if width <= 0:
        return ""
    if cell_len(text) > width:
        return set_cell_size(text[: max(0, width - 1)] + "…", width)
    pad = " " * (width - cell_len(text))
    return pad + text if align == ">" else text + pad


def fit_middle(text: str, width: int) -> str:
    """``text`` in exactly ``width`` cells, cut in the middle: ``sim-n…e-022``.

    For names that differ at their end (``sim-node-021``, ``sim-node-022``): an end cut
    would draw every one of them as ``sim-node-0…``.
    """
    if width <= 0:
        return ""
    if cell_len(text) <= width:
        return text + " " * (width - cell_len(text))
    head = (width - 1) // 2
    tail = width - 1 - head
    return set_cell_size(text[:head], head) + "…" + set_cell_size(text[len(text) - tail:], tail)


def header_cell(column: Column, sort: str, reverse: bool) -> str:
    """A column title with a one-cell slot for the sort arrow, so sorting never shifts the text.

    The slot sits on the side away from the values, in the padding or the gap between
    columns: just before a right-aligned title, just after a left-aligned one.
    """
    arrow = ("▼" if reverse else "▲") if column.sort is not None and column.sort == sort else " "
    if column.align == ">":
        return fit(arrow + column.title, column.width, ">")
    if cell_len(column.title) < column.width - 1:
        return fit(column.title + arrow, column.width - 1) + " "
    return fit(column.title, column.width - 1) + arrow


class LineTable(ScrollView, Generic[RowT], can_focus=True):
    """Rows under a one-line header; the cursor is a row index kept on screen."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {f"line-table--{role}" for role in ROLES}
    DEFAULT_CSS = """
    LineTable {
        height: 1fr;
        scrollbar-size-vertical: 1;
        /* Cells never overflow sideways: a horizontal bar would hide the last row. */
        overflow-x: hidden;
        background: $surface;
    }
    LineTable > .line-table--cell { color: $foreground; background: $surface; }
    LineTable > .line-table--header { text-style: bold; color: $text-muted; background: $panel; }
    LineTable > .line-table--node { text-style: bold; color: $foreground; background: $surface; }
    LineTable > .line-table--cursor { background: $accent 35%; }
    LineTable > .line-table--cursor-blurred { background: $accent 15%; }
    /* Text in the theme's text-* shades (legible on light and dark); bars in the full colours. */
    LineTable > .line-table--ok { color: $text-success; background: $surface; }
    LineTable > .line-table--warn { color: $text-warning; background: $surface; }
    LineTable > .line-table--crit { color: $text-error; text-style: bold; background: $surface; }
    LineTable > .line-table--bar-ok { color: $success; background: $surface; }
    LineTable > .line-table--bar-warn { color: $warning; background: $surface; }
    LineTable > .line-table--bar-crit { color: $error; background: $surface; }
    LineTable > .line-table--dim { color: $text-muted; background: $surface; }
    LineTable > .line-table--bar-free { color: $foreground 25%; background: $surface; }
    LineTable > .line-table--badge { background: $warning; color: $text; text-style: bold; }
    """
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

        def __init__(self, row: Any) -> None:
            super().__init__()
            self.row = row

    class HeaderClicked(Message):
        def __init__(self, sort: str) -> None:
            super().__init__()
            self.sort = sort

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.rows: list[RowT] = []
        self.sort = ""
        self.reverse = False
        self._cursor_key: Hashable | None = None
        self._lines: dict[Hashable, tuple[RowT, Hashable, Strip]] = {}
        self._lines_for: Hashable = None

    # -- what subclasses provide ---------------------------------------------------------

    def columns(self, width: int) -> list[Column]:
        raise NotImplementedError

    def row_segments(self, row: RowT, width: int) -> list[Segment]:
        raise NotImplementedError

    @staticmethod
    def row_key(row: RowT) -> Hashable:
        return getattr(row, "key")  # noqa: B009 - rows are dataclasses with a key property

    def cache_token(self, row: RowT) -> Hashable | None:
        """What, besides the row object itself, its drawn line depends on; ``None``: never reuse it.

        A line drawn for the same row object and token (at the same width and styles) is reused:
        a poll that changed one node redraws that node's lines, not the whole screen's.
        """
        return None

    def layout_token(self) -> Hashable:
        """What every line depends on besides the width and the theme (a subclass's view)."""
        return None

    # -- data in -------------------------------------------------------------------

    def show(self, rows: Sequence[RowT], *, sort: str, reverse: bool, follow: bool = True) -> None:
        """Replace the rows.

        ``follow``: the cursor stays on the same row (by key) and scrolls into view. Otherwise
        the cursor keeps its place on screen and the view does not move (htop style), so
        live values re-sorting the list never carry the view away.
        """
        before = (self.rows, self.scroll_offset.y, self.cursor, self.sort, self.reverse)
        self.rows, self.sort, self.reverse = list(rows), sort, reverse
        top = self.scroll_offset.y
        self.virtual_size = Size(self.scrollable_content_region.width, len(self.rows) + 1)
        index = None
        if follow:
            index = next((i for i, r in enumerate(self.rows) if self.row_key(r) == self._cursor_key), None)
        if index is None:
            index = min(self.cursor, max(0, len(self.rows) - 1))
        if not follow:
            self.scroll_to(y=min(top, self._max_top()), animate=False, immediate=True)
            self.set_reactive(LineTable.cursor, index)
            row = self.current
            self._cursor_key = self.row_key(row) if row is not None else None
            self._refresh_changed(*before)
            return
        if index == self.cursor:
            self.set_reactive(LineTable.cursor, index)  # no move: only what changed is drawn again
            self._refresh_changed(*before)
        else:
            self.cursor = index

    def _refresh_changed(self, rows: list[RowT], top: int, cursor: int, sort: str, reverse: bool) -> None:
        """Redraw the lines on screen whose row changed; everything when the view moved.

        A poll that changed a few nodes redraws their lines only, so the screen (and a key
        pressed meanwhile) does not wait for every line to be drawn and composited again.
        """
        if top != self.scroll_offset.y or (sort, reverse) != (self.sort, self.reverse):
            self.refresh()
            return
        for i in range(top, top + self.visible_rows):
            old = rows[i] if i < len(rows) else None
            new = self.rows[i] if i < len(self.rows) else None
            if old is not new or (i in (cursor, self.cursor) and cursor != self.cursor) or self._drawn_stale(new):
                self.refresh_line(i + 1)  # row i is virtual line i + 1 (the header is line 0)

    def _drawn_stale(self, row: RowT | None) -> bool:
        """The same row object, last drawn for another token (its node stopped answering, say)."""
        if row is None:
            return False
        token = self.cache_token(row)
        if token is None:
            return True  # not cached (node rows): always drawn afresh
        drawn = self._lines.get(self.row_key(row))
        return drawn is None or drawn[0] is not row or drawn[1] != token

    @property
    def current(self) -> RowT | None:
        return self.rows[self.cursor] if 0 <= self.cursor < len(self.rows) else None

    def follow_key(self, key: Hashable) -> None:
        """The next ``show(follow=True)`` puts the cursor on the row with ``key``, when there is one."""
        self._cursor_key = key

    def move_to(self, key: Hashable) -> bool:
        index = next((i for i, r in enumerate(self.rows) if self.row_key(r) == key), None)
        if index is None:
            return False
        self.cursor = index
        return True

    # -- cursor --------------------------------------------------------------------

    @property
    def visible_rows(self) -> int:
        """Rows on screen below the header."""
        return max(1, self.scrollable_content_region.height - 1)

    def _max_top(self) -> int:
        return max(0, len(self.rows) - self.visible_rows)

    def validate_cursor(self, value: int) -> int:
        return min(max(value, 0), max(0, len(self.rows) - 1))

    def watch_cursor(self, value: int) -> None:
        row = self.current
        self._cursor_key = self.row_key(row) if row is not None else None
        # Line 0 is the header, so row i is on virtual line i + 1.
        top = self.scroll_offset.y
        if value < top:
            self.scroll_to(y=value, animate=False, immediate=True)
        elif value >= top + self.visible_rows:
            self.scroll_to(y=value - self.visible_rows + 1, animate=False, immediate=True)
        self.refresh()

    def action_cursor(self, delta: int) -> None:
        self.cursor += delta

    def action_page(self, direction: int) -> None:
        self.cursor += direction * max(1, self.visible_rows - 1)

    def action_edge(self, direction: int) -> None:
        self.cursor = 0 if direction < 0 else len(self.rows) - 1

    def action_select(self) -> None:
        if self.current is not None:
            self.post_message(self.Selected(self.current))

    def on_resize(self, event: events.Resize) -> None:
        self.virtual_size = Size(self.scrollable_content_region.width, len(self.rows) + 1)
        self.call_after_refresh(self._keep_cursor_visible)

    def _keep_cursor_visible(self) -> None:
        self.cursor = self.cursor  # always_update: scrolls the cursor back into view

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    def on_click(self, event: events.Click) -> None:
        if event.y == 0:
            x = event.x
            for column in self.columns(self.scrollable_content_region.width):
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

    def _style(self, role: str | None) -> Style:
        """The theme's style for a cell role (``None``: a plain cell)."""
        return self.get_component_rich_style(f"line-table--{role or 'cell'}")

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        cell = self._style("cell")
        if y == 0:
            return self._header(width)
        index = self.scroll_offset.y + y - 1
        if index >= len(self.rows):
            return Strip.blank(width, cell)
        strip = self._row_line(self.rows[index], width, cell)
        if index == self.cursor:
            strip = self._with_cursor(strip, cell)
        return strip

    def _row_line(self, row: RowT, width: int, cell: Style) -> Strip:
        """The row drawn ``width`` cells wide; the same row object and token reuse the line drawn before."""
        token = self.cache_token(row)
        if token is None:
            return Strip(self.row_segments(row, width)).crop_extend(0, width, cell)
        generation = (width, cell, self.layout_token())
        if generation != self._lines_for or len(self._lines) > 4 * len(self.rows) + 64:
            self._lines, self._lines_for = {}, generation
        key = self.row_key(row)
        cached = self._lines.get(key)
        if cached is not None and cached[0] is row and cached[1] == token:
            return cached[2]
        # The finished strip is kept (a Strip is immutable): each one built costs Textual's caches.
        strip = Strip(self.row_segments(row, width)).crop_extend(0, width, cell)
        self._lines[key] = (row, token, strip)
        return strip

    def _with_cursor(self, strip: Strip, cell: Style) -> Strip:
        """The cursor's background on every cell of the row (over the cells' own), badges kept."""
        cursor = self._style("cursor" if self.has_focus else "cursor-blurred")
        badge = self._style("badge").bgcolor
        lit = Style(bgcolor=cursor.bgcolor)
        return Strip([
            seg if seg.style is not None and seg.style.bgcolor == badge and badge != cell.bgcolor
            else Segment(seg.text, (seg.style or cell) + lit)
            for seg in strip
        ], strip.cell_length)

    def _header(self, width: int) -> Strip:
        style = self._style("header")
        segments = [Segment(header_cell(column, self.sort, self.reverse), style)
                    for column in self.columns(width)]
        return Strip(segments).crop_extend(0, width, style)

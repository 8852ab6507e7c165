"""A time-true history graph: bars on a fixed scale, a labelled time axis, stale readings aged.

Each column covers an equal slice of the window (15 minutes over 33 columns is
27 s a column) and shows the highest reading in it; a reading lasts until the
next one, or two poll intervals at most, so a node that stopped answering leaves
a gap up to "now" instead of a line that looks current. Drawn with block
elements (eighths of a cell), which every terminal font over SSH renders whole;
braille and plotext's framed plots were tried and read worse at 80x24.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip
from textual.widget import Widget

from gpufleet.console.widgets.format import level

_BLOCKS = " ▁▂▃▄▅▆▇█"
FLOOR = "▁"  # a reading too small for an eighth still shows that a reading was there


@dataclass(frozen=True, slots=True)
class Series:
    """What one graph shows: its title, how a value is written, its scale and its colours."""

    title: str
    fmt: Callable[[float], str]  # a reading with its unit: "94%", "608 W"
    axis: Callable[[float], str]  # the scale's top, short: "100%", "700W"
    thresholds: tuple[float, float] | None = None  # (warn, crit) in the value's own unit


def bucket(times: Sequence[float], values: Sequence[float | None], *, now: float,
           window_s: float, width: int, hold_s: float) -> list[float | None]:
    """The highest reading in each of ``width`` equal slices of the ``window_s`` before ``now``.

    ``times`` are ascending POSIX seconds; a reading holds until the next one, at most
    ``hold_s``, and never past ``now``. A slice no reading reaches is None (a gap).
    """
    columns: list[float | None] = [None] * width
    if width <= 0 or window_s <= 0:
        return columns
    span = window_s / width
    start = now - window_s
    count = len(times)
    for i in range(count):
        value = values[i]
        if value is None:
            continue
        begin = times[i]
        end = min(times[i + 1] if i + 1 < count else now, begin + hold_s, now)
        if end < start or begin > now:
            continue
        # A reading taken at ``now`` itself is the last column's (the float division can land
        # just past it, which would drop the newest reading from the graph).
        first = min(width - 1, max(0, int((begin - start) // span)))
        # A reading that ends exactly on a column's edge does not reach into that column.
        last = int((end - start) // span) if end > begin else first
        if last > first and (end - start) % span == 0:
            last -= 1
        for column in range(first, min(last, width - 1) + 1):
            held = columns[column]
            columns[column] = value if held is None or value > held else held
    return columns


def bar_cells(columns: Sequence[float | None], height: int, top: float) -> list[list[str]]:
    """Rows (top first) of one character per column: eighth blocks scaled to ``0..top``."""
    rows = [[" "] * len(columns) for _ in range(height)]
    for x, value in enumerate(columns):
        if value is None:
            continue
        eighths = round(min(max(value / top, 0.0), 1.0) * height * 8) if top > 0 else 0
        if eighths == 0:
            rows[height - 1][x] = FLOOR
            continue
        for row in range(height):
            fill = eighths - (height - 1 - row) * 8
            rows[row][x] = _BLOCKS[min(8, max(0, fill))]
    return rows


def axis_labels(window_s: float, width: int) -> str:
    """The time axis under ``width`` columns: ``-15m`` at the left, ``now`` at the right, thirds between."""
    def label(seconds: float) -> str:
        return f"-{seconds / 60:g}m" if seconds >= 60 else f"-{seconds:g}s"

    line = [" "] * width
    right = "now"
    if width < len(right):
        return right[:width]
    line[width - len(right):] = right
    left = label(window_s)
    if width >= len(left) + len(right) + 1:
        line[: len(left)] = left
        # The thirds, centred on their columns, where they fit between their neighbours with a space.
        for part in (2, 1):
            text = label(window_s * part / 3)
            centre = round(width * (3 - part) / 3)
            begin = max(0, centre - len(text) // 2)
            lo, hi = max(0, begin - 1), min(width, begin + len(text) + 1)
            if all(c == " " for c in line[lo:hi]):
                line[begin: begin + len(text)] = text
    return "".join(line)


class HistoryGraph(Widget):
    """One series over the history window: a title line, ``height - 2`` bar rows, a time axis."""

    COMPONENT_CLASSES = {
        "history-graph--title", "history-graph--value", "history-graph--axis",
        "history-graph--ok", "history-graph--warn", "history-graph--crit",
    }
    DEFAULT_CSS = """
    HistoryGraph { height: 4; }
    HistoryGraph > .history-graph--title { text-style: bold; color: $text; }
    HistoryGraph > .history-graph--value { color: $text-muted; }
    HistoryGraph > .history-graph--axis { color: $text-muted; }
    HistoryGraph > .history-graph--ok { color: $success; }
    HistoryGraph > .history-graph--warn { color: $warning; }
    HistoryGraph > .history-graph--crit { color: $error; }
    """

    def __init__(self, series: Series, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.series = series
        self._times: Sequence[float] = ()
        self._values: Sequence[float | None] = ()
        self._now = 0.0
        self._window_s = 900.0
        self._hold_s = 4.0
        self._top = 100.0
        self._age: str | None = None
        self._strips: list[Strip] | None = None
        self._drawn_size: tuple[int, int] = (0, 0)

    def show(self, times: Sequence[float], values: Sequence[float | None], *, now: float,
             window_s: float, hold_s: float, top: float, age: str | None = None) -> None:
        """Redraw from readings at ``times``; ``age`` (``3m ago``) marks the latest as stale."""
        self._times, self._values, self._now = times, values, now
        self._window_s, self._hold_s, self._top, self._age = window_s, hold_s, top, age
        self._strips = None
        self.refresh()

    def caption(self) -> str:
        """``94% now · peak 97%``, or ``94% 3m ago`` when stale, ``not reported`` without readings."""
        known = [v for v in self._values if v is not None]
        if not known:
            return "not reported" if self._values else "no readings yet"
        latest = next((v for v in reversed(self._values) if v is not None), None)
        assert latest is not None
        when = self._age or "now"
        return f"{self.series.fmt(latest)} {when} · peak {self.series.fmt(max(known))}"

    def render_line(self, y: int) -> Strip:
        width, height = self.size
        if self._strips is None or self._drawn_size != (width, height):
            self._strips = self._draw(width, height)
            self._drawn_size = (width, height)
        if 0 <= y < len(self._strips):
            return self._strips[y]
        return Strip.blank(width, self.rich_style)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips = None  # a theme change recolours every cell

    def _style(self, name: str) -> Style:
        return foreground(self.rich_style, self.get_component_rich_style(f"history-graph--{name}"))

    def _draw(self, width: int, height: int) -> list[Strip]:
        base = self.rich_style
        title = [Segment(self.series.title, self._style("title")),
                 Segment("  " + self.caption(), self._style("value"))]
        strips = [Strip(title).crop(0, width).adjust_cell_length(width, base)]
        rows = max(1, height - 2)
        top_label = self.series.axis(self._top)
        label_width = max(len(top_label), 1)
        plot_width = max(0, width - label_width - 1)
        columns = bucket(self._times, self._values, now=self._now, window_s=self._window_s,
                         width=plot_width, hold_s=self._hold_s)
        cells = bar_cells(columns, rows, self._top)
        levels = [self._level(v, rows) for v in columns]
        axis = self._style("axis")
        colours = {lvl: self._style(lvl) for lvl in ("ok", "warn", "crit")}
        colours["floor"] = axis
        for r, row in enumerate(cells):
            label = top_label if r == 0 else "0" if r == rows - 1 else ""
            segments = [Segment(f"{label:>{label_width}}┤" if label else " " * label_width + "│", axis)]
            segments += _runs(row, levels, colours)
            strips.append(Strip(segments).adjust_cell_length(width, base))
        times = " " * (label_width + 1) + axis_labels(self._window_s, plot_width)
        strips.append(Strip([Segment(times, axis)]).adjust_cell_length(width, base))
        return strips[:height]

    def _level(self, value: float | None, rows: int) -> str:
        """The colour of a column: its threshold level, or "floor" for a reading under an eighth."""
        if value is not None and self._top > 0 and round(min(value / self._top, 1.0) * rows * 8) <= 0:
            return "floor"
        if value is None or self.series.thresholds is None:
            return "ok"
        return level(value, self.series.thresholds)


def foreground(base: Style, component: Style) -> Style:
    """``component``'s colour and weight over ``base``: cells keep the widget's background.

    The full component style, not the partial one: a theme colour such as ``$text`` is
    "auto", worked out against a background, which only the full style has.
    """
    return base + Style(color=component.color, bold=component.bold, italic=component.italic)


def _runs(row: list[str], levels: list[str], colours: dict[str, Style]) -> list[Segment]:
    """One segment per run of columns drawn alike, so a row is a handful of segments, not 40."""
    segments: list[Segment] = []
    text: list[str] = []
    current: Style | None = None
    for char, lvl in zip(row, levels, strict=True):
        colour = colours[lvl]
        if colour is not current and text:
            segments.append(Segment("".join(text), current))
            text = []
        current = colour
        text.append(char)
    if text:
        segments.append(Segment("".join(text), current))
    return segments

"""Sparklines on a fixed scale, newest reading on the right (one column per poll, or buckets)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.segment import Segment
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Static

from gpufleet.console.widgets.badges import set_text

_BLOCKS = " ▁▂▃▄▅▆▇█"
CAPTION_WIDTH = 22  # "now 1000 W max 1000 W" and a space


def columns(values: Sequence[float], width: int) -> list[float]:
    """At most ``width`` values: the newest ``width`` readings, or bucket maxima of all of them."""
    if len(values) <= width:
        return list(values)
    size = len(values) / width
    return [max(values[int(i * size): max(int(i * size) + 1, int((i + 1) * size))]) for i in range(width)]


def bar_rows(values: Sequence[float], width: int, height: int, top: float) -> list[str]:
    """Text rows (top first) of a bar chart of ``values`` scaled to ``0..top``, right-aligned."""
    data = columns(values, width)
    pad = width - len(data)
    rows = []
    for row in range(height - 1, -1, -1):
        line = []
        for value in data:
            eighths = round(min(max(value / top, 0.0), 1.0) * height * 8) if top > 0 else 0
            line.append(_BLOCKS[min(8, max(0, eighths - row * 8))])
        rows.append(" " * pad + "".join(line))
    return rows


class Spark(Widget):
    """A fixed-scale sparkline; ``show(values, top)`` redraws it."""

    COMPONENT_CLASSES = {"spark--bar"}
    DEFAULT_CSS = """
    Spark { height: 2; }
    Spark > .spark--bar { color: $accent; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.values: list[float] = []
        self.top = 100.0

    def show(self, values: Sequence[float], top: float) -> None:
        self.values, self.top = list(values), top
        self.refresh()

    def render_line(self, y: int) -> Strip:
        width, height = self.size
        rows = bar_rows(self.values, width, height, self.top)
        text = rows[y] if 0 <= y < len(rows) else ""
        style = self.get_component_rich_style("spark--bar")
        return Strip([Segment(text, style)]).adjust_cell_length(width, self.rich_style)


class MetricSpark(Horizontal):
    """A titled sparkline: name, current and peak value beside the bars."""

    DEFAULT_CSS = f"""
    MetricSpark {{ height: 2; margin-bottom: 1; }}
    MetricSpark > .metric-spark--title {{ width: {CAPTION_WIDTH}; color: $text-muted; }}
    MetricSpark > Spark {{ width: 1fr; }}
    """

    def __init__(self, title: str, unit: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.title, self.unit = title, unit

    def compose(self) -> ComposeResult:
        yield Static(self.title, classes="metric-spark--title")
        yield Spark()

    def show(self, values: Sequence[float], top: float) -> None:
        # Fixed size (two lines, a fixed width): no layout needed, and often unchanged.
        set_text(self.query_one(".metric-spark--title", Static),
                 f"[b]{self.title}[/b]\n{caption(values, self.unit)}", layout=False)
        self.query_one(Spark).show(values, top)


def caption(values: Sequence[float], unit: str) -> str:
    """``now 256 W max 288 W``: the latest and the highest reading, each with its unit."""
    if not values:
        return "now — max —"
    return f"now {values[-1]:.0f}{unit} max {max(values):.0f}{unit}"

"""A horizontal used/total bar: segments for the fleet table's lines and a widget for detail."""

from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.widget import Widget

from gpufleet.console.widgets.format import MEMORY_PCT, MEMORY_UNIT, gb, level

_EIGHTHS = " ▏▎▍▌▋▊▉"
FULL, FREE = "█", "░"


def bar_text(fraction: float, width: int) -> tuple[str, str]:
    """(used part, free part) of a bar ``width`` cells wide, with eighth-cell precision."""
    fraction = min(max(fraction, 0.0), 1.0)
    eighths = round(fraction * width * 8)
    full, rest = divmod(eighths, 8)
    used = FULL * full + (_EIGHTHS[rest] if rest and full < width else "")
    return used, FREE * (width - len(used))


def bar_segments(fraction: float, width: int, used: Style, free: Style) -> list[Segment]:
    used_text, free_text = bar_text(fraction, width)
    return [Segment(used_text, used), Segment(free_text, free)]


class MemoryBar(Widget):
    """Used/total memory of one GPU as a bar with the figures beside it."""

    COMPONENT_CLASSES = {"memory-bar--ok", "memory-bar--warn", "memory-bar--crit", "memory-bar--free"}
    DEFAULT_CSS = """
    MemoryBar { height: 1; }
    MemoryBar > .memory-bar--ok { color: $success; }
    MemoryBar > .memory-bar--warn { color: $warning; }
    MemoryBar > .memory-bar--crit { color: $error; }
    MemoryBar > .memory-bar--free { color: $foreground-darken-3; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._used_mb = 0
        self._total_mb = 0

    def show(self, used_mb: int, total_mb: int) -> None:
        self._used_mb, self._total_mb = used_mb, total_mb
        self.refresh()

    def render_line_text(self) -> tuple[list[Segment], str]:
        total = self._total_mb or 1
        fraction = self._used_mb / total
        label = f" {gb(self._used_mb)}/{gb(self._total_mb)} {MEMORY_UNIT} ({100 * fraction:.0f}%)"
        width = max(4, self.size.width - len(label))
        lvl = level(100 * fraction, MEMORY_PCT)
        used = self.get_component_rich_style(f"memory-bar--{lvl}")
        free = self.get_component_rich_style("memory-bar--free")
        return bar_segments(fraction, width, used, free), label

    def render(self) -> Text:
        segments, label = self.render_line_text()
        text = Text()
        for seg in segments:
            text.append(seg.text, seg.style)
        text.append(label)
        return text

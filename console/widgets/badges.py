"""Small labels: the SIMULATED badge, and updating a label only when its text changes."""

from __future__ import annotations

from textual.widgets import Static


class SimulatedBadge(Static):
    """Shown whenever any node reports simulated GPUs; hidden otherwise."""

    DEFAULT_CSS = """
    SimulatedBadge {
        width: auto;
        padding: 0 1;
        background: $warning;
        color: $text;
        text-style: bold;
        display: none;
    }
    SimulatedBadge.-on { display: block; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("SIMULATED", id=id)

    def set_on(self, on: bool) -> None:
        self.set_class(on, "-on")


def set_text(label: Static, text: str, *, layout: bool = True) -> None:
    """Update ``label`` only if ``text`` differs: an update re-lays out the screen and repaints it."""
    if label.content != text:
        label.update(text, layout=layout)

"""The key bar every screen shows, tightened on narrow terminals so the keys that matter fit."""

from __future__ import annotations

from textual import events
from textual.widgets import Footer

# Below this width the normal padding pushes Help and Quit off an 80-column screen.
COMPACT_BELOW = 100


class ConsoleFooter(Footer):
    """Textual's footer, compact (and without the palette hint) when the screen is narrow."""

    # A group's label ("Period") keeps a space before the next key even when compact.
    DEFAULT_CSS = """
    ConsoleFooter.-compact FooterLabel { margin: 0 1 0 0; }
    """

    def on_resize(self, event: events.Resize) -> None:
        narrow = event.size.width < COMPACT_BELOW
        self.compact = narrow
        if self.show_command_palette == narrow:
            # The palette key (ctrl+p) is in the help screen; here it costs 12 cells.
            self.show_command_palette = not narrow
            self.call_after_refresh(self.recompose)

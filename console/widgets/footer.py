"""The key bar every screen shows, tightened on narrow terminals so the keys that matter fit."""

from __future__ import annotations

from textual import events
from textual.app import ComposeResult
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

# Below this width the normal padding pushes Help and Quit off an 80-column screen.
COMPACT_BELOW = 100


class ConsoleFooter(Footer):
    """Textual's footer, compact (and without the palette hint) when the screen is narrow.

    When compact, it also leaves out the actions a screen lists in ``FOOTER_COMPACT_HIDDEN``
    (help and the command palette still have them), so the rest fit 80 columns.
    """

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

    def compose(self) -> ComposeResult:
        hidden: frozenset[str] = getattr(self.screen, "FOOTER_COMPACT_HIDDEN", frozenset()) if self.compact \
            else frozenset()
        shown = 0
        for widget in super().compose():
            if isinstance(widget, FooterKey) and widget.action in hidden:
                continue
            shown += isinstance(widget, FooterKey)
            yield widget
        if hidden:
            self.styles.grid_size_columns = shown

"""The key bar every screen shows, tightened on narrow terminals so the keys that matter fit."""

from __future__ import annotations

from textual import events
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

# Below this width the normal padding pushes Help and Quit off an 80-column screen.
COMPACT_BELOW = 100


class ConsoleFooter(Footer):
    """Textual's footer, compact (and without the palette hint) when the screen is narrow.

    A screen may name, in ``FOOTER_HIDE_BELOW``, actions whose keys leave the footer below a
    width (help and the command palette still list them), so the keys that matter stay whole.
    """

    # A group's label ("Period") keeps a space before the next key even when compact.
    DEFAULT_CSS = """
    ConsoleFooter.-compact FooterLabel { margin: 0 1 0 0; }
    """

    _hidden: frozenset[str] = frozenset()
    _shown: tuple[tuple[str, str, bool], ...] | None = None  # the keys composed last

    def _signature(self) -> tuple[tuple[str, str, bool], ...]:
        """The keys the footer would show: (key, description, enabled) of each shown binding."""
        return tuple((key, active.binding.description, active.enabled)
                     for key, active in self.screen.active_bindings.items()
                     if active.binding.show and active.binding.action not in self._hidden)

    def bindings_changed(self, screen: Screen) -> None:  # type: ignore[type-arg]
        # Focus moving between widgets refreshes the bindings; recomposing the footer costs a
        # layout of the whole screen, so only when what it shows has changed.
        if self._shown is not None and self.is_attached and screen is self.screen \
                and self._signature() == self._shown:
            return
        super().bindings_changed(screen)

    def _hidden_at(self, width: int) -> frozenset[str]:
        below: dict[str, int] = getattr(self.screen, "FOOTER_HIDE_BELOW", {})
        return frozenset(action for action, limit in below.items() if width < limit)

    def on_resize(self, event: events.Resize) -> None:
        narrow = event.size.width < COMPACT_BELOW
        self.compact = narrow
        hidden = self._hidden_at(event.size.width)
        if self.show_command_palette == narrow or hidden != self._hidden:
            # The palette key (ctrl+p) is in the help screen; here it costs 12 cells.
            self.show_command_palette = not narrow
            self._hidden = hidden
            self.call_after_refresh(self.recompose)

    def compose(self) -> ComposeResult:
        hidden = self._hidden
        if self._bindings_ready:
            self._shown = self._signature()
        shown = 0
        for widget in super().compose():
            if isinstance(widget, FooterKey) and widget.action in hidden:
                continue
            shown += isinstance(widget, FooterKey)
            yield widget
        if hidden:
            self.styles.grid_size_columns = shown

"""The key bar every screen shows, tightened on narrow terminals so the keys that matter fit."""

from __future__ import annotations

from textual import events
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

Shown = tuple[str, str, str, bool]  # key, action, description, enabled

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
    _shown: tuple[Shown, ...] | None = None  # the keys shown now

    def _signature(self) -> tuple[Shown, ...]:
        """The keys the footer would show: (key, action, description, enabled) of each shown binding."""
        return tuple((key, active.binding.action, active.binding.description, active.enabled)
                     for key, active in self.screen.active_bindings.items()
                     if active.binding.show and active.binding.action not in self._hidden)

    def bindings_changed(self, screen: Screen) -> None:  # type: ignore[type-arg]
        # Focus moving between widgets, or a view whose keys differ (the fleet's `v` leaves the
        # process view), refreshes the bindings. Recomposing mounts every key again and lays out
        # the whole screen: a view switch waited 20-40 ms for it. So only when a key appears
        # that was never composed; otherwise the composed keys are shown, hidden or dimmed.
        if self._shown is not None and self.is_attached and screen is self.screen:
            signature = self._signature()
            if signature == self._shown or self._update_in_place(signature):
                return
        super().bindings_changed(screen)

    def _update_in_place(self, signature: tuple[Shown, ...]) -> bool:
        """Show exactly ``signature``'s keys by hiding, showing and dimming those composed; False if it cannot."""
        wanted: dict[tuple[str, str], tuple[str, bool]] = {}
        for key, action, description, enabled in signature:
            if not any(k[1] == action for k in wanted):  # the footer shows an action's first key
                wanted[(key, action)] = (description, enabled)
        composed = [k for k in self.query(FooterKey) if not k.has_class("-command-palette")]
        by_id = {(k.key, k.action): k for k in composed}
        if len(by_id) != len(composed) or any(k not in by_id for k in wanted):
            return False
        order = [(k.key, k.action) for k in composed if (k.key, k.action) in wanted]
        if order != list(wanted) or any(by_id[k].description != wanted[k][0] for k in wanted
                                         if by_id[k].parent is self):
            return False
        for ident, widget in by_id.items():
            show = ident in wanted
            enabled = wanted[ident][1] if show else True
            if widget.parent is not self and (widget.display != show or widget._disabled == enabled):
                return False  # a key of a group: its label would be left behind
        for ident, widget in by_id.items():
            show = ident in wanted
            widget.display = show
            if show:
                widget._disabled = not wanted[ident][1]
                widget.set_class(widget._disabled, "-disabled")
        self._shown = signature
        return True

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

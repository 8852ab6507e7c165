"""Help: every key binding of the running app, read from its BINDINGS and keymap so it never drifts.

Mount with ``HelpScreen(screens=[FleetScreen, ChargebackScreen, ...])``: the app's
own bindings come first, then each screen class's, each shown with the key the
keymap gives it now, its id (what ``[console.keybindings]`` remaps) and its
description.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingsMap
from textual.containers import Vertical
from textual.dom import DOMNode
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label, Static

PALETTE_HINT = (
    "Every action is also in the command palette ({palette}). Remap a key by its binding id "
    "in the config: [console.keybindings] \"chargeback.export\" = \"x\". Tab moves focus."
)


@dataclass(frozen=True)
class HelpEntry:
    section: str
    keys: str
    binding_id: str
    description: str


def _own_bindings(cls: type[DOMNode]) -> BindingsMap:
    """The bindings a class and its non-Textual ancestors declare (Textual's own stay out).

    A screen lists in ``HELP_WIDGETS`` the widget classes whose keys belong in its section
    (the fleet table's cursor keys and Enter), since those bindings live on the widget.
    """
    declared: list[Binding] = []
    for klass in reversed(cls.__mro__):
        if klass.__module__.startswith("textual.") or "BINDINGS" not in klass.__dict__:
            continue
        declared.extend(Binding.make_bindings(klass.__dict__["BINDINGS"]))
    for widget in getattr(cls, "HELP_WIDGETS", ()):
        declared.extend(binding for _, binding in _own_bindings(widget))
    return BindingsMap(declared)


def collect_bindings(app: App[object], screens: Iterable[type[DOMNode]] = (),
                     hidden_ids: Collection[str] = ()) -> list[HelpEntry]:
    """The bindings of ``app`` and of each screen class, one entry per action, in declared order.

    ``hidden_ids`` are left out: bindings that do nothing in this console (purge when read-only).
    """
    keymap: dict[str, str] = dict(getattr(app, "_keymap", {}) or {})
    sections: list[tuple[str, type[DOMNode]]] = [("Everywhere", type(app))]
    sections += [(_section_name(cls), cls) for cls in screens]
    entries: list[HelpEntry] = []
    for section, cls in sections:
        bindings = _own_bindings(cls)
        declared = {(b.action, b.id or ""): b for _, b in bindings}
        if keymap:
            # Textual applies the keymap by binding id at dispatch; show what it will do.
            bindings.apply_keymap(keymap)
        keys_by_action: dict[tuple[str, str], list[str]] = {}
        for key, binding in bindings:
            keys_by_action.setdefault((binding.action, binding.id or ""), []).append(
                binding.key_display or _display_key(key))
        for (action, binding_id), keys in keys_by_action.items():
            if binding_id in hidden_ids:
                continue
            binding = declared.get((action, binding_id))
            description = (binding.description or binding.tooltip) if binding else ""
            entries.append(HelpEntry(section, ", ".join(dict.fromkeys(keys)),
                                     binding_id or "—", description or action))
    return entries


def _section_name(cls: type[DOMNode]) -> str:
    titled = getattr(cls, "HELP_SECTION", None)
    if isinstance(titled, str):
        return titled
    name = cls.__name__.removesuffix("Screen").removesuffix("Modal")
    return name or cls.__name__


def _display_key(key: str) -> str:
    replacements = {"question_mark": "?", "slash": "/", "escape": "esc", "full_stop": "."}
    return replacements.get(key, key)


class HelpScreen(ModalScreen[None]):
    """A table of every binding; esc or ? closes it."""

    BINDINGS = [Binding("escape,question_mark,q", "close_help", "Close help", id="help.close")]

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical {
        width: 100; max-width: 100%; height: 100%; max-height: 36;
        border: thick $primary; background: $surface; padding: 0 1;
    }
    HelpScreen #help-title { text-style: bold; color: $text-accent; }
    HelpScreen #help-hint { color: $text-muted; height: auto; margin-bottom: 1; }
    HelpScreen DataTable { height: 1fr; }
    """

    def __init__(self, screens: Sequence[type[DOMNode]] = (), *, hidden_ids: Collection[str] = (),
                 note: str = "", name: str | None = None, id: str | None = None) -> None:
        super().__init__(name=name, id=id)
        self._screens = tuple(screens)
        self._hidden_ids = frozenset(hidden_ids)
        self._note = note

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Keys", id="help-title")
            hint = PALETTE_HINT.format(palette=self.app.COMMAND_PALETTE_BINDING)
            yield Static(f"{self._note} {hint}" if self._note else hint, id="help-hint", markup=False)
            yield DataTable(id="help-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        table = self.query_one("#help-table", DataTable)
        table.add_columns("Where", "Key", "Action", "Binding id")
        previous = None
        for entry in collect_bindings(self.app, self._screens, self._hidden_ids):
            where = entry.section if entry.section != previous else ""
            previous = entry.section
            table.add_row(where, entry.keys, entry.description, entry.binding_id)
        table.focus()

    def action_close_help(self) -> None:
        self.dismiss(None)

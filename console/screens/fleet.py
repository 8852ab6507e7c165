"""The fleet screen: every GPU of every node, sortable and filterable."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Input, Static

from gpufleet.console.state import SORT_KEYS, FleetRow, FleetState, SortKey
from gpufleet.console.widgets.badges import SimulatedBadge, set_text
from gpufleet.console.widgets.fleet_table import FleetTable
from gpufleet.console.widgets.footer import ConsoleFooter


class FilterInput(Input):
    """The filter box; while it has the keys, the footer says Esc clears it (the placeholder is gone)."""

    BINDINGS = [Binding("escape", "screen.clear_filter", "Clear filter", id="fleet.filter_box_clear",
                        tooltip="Clear the filter and show every GPU")]


class FleetScreen(Screen[None]):
    """The console's home: a live table of the fleet."""

    HELP_WIDGETS = (FleetTable,)

    BINDINGS = [
        Binding("slash", "filter", "Filter", id="fleet.filter", tooltip="Filter by node, GPU, team, model or process"),
        Binding("s", "sort_next", "Sort", id="fleet.sort", tooltip="Sort by the next column"),
        Binding("r", "sort_reverse", "Reverse", id="fleet.reverse", tooltip="Reverse the sort order"),
        Binding("p", "purge", "Purge", id="fleet.purge", tooltip="Purge the GPU (or node) under the cursor"),
        Binding("escape", "clear_filter", "Clear filter", show=False, id="fleet.clear_filter",
                tooltip="Clear the filter and show every GPU"),
    ]

    def __init__(self, state: FleetState, *, clock: Callable[[], datetime], readonly: bool,
                 mask_rtt: bool = False) -> None:
        super().__init__(id="fleet")
        self.state = state
        self.clock = clock
        self.readonly = readonly
        self.mask_rtt = mask_rtt
        self.sort: SortKey = "node"
        self.reverse = False
        self.query_text = ""
        self._drawn_version = -1

    def compose(self) -> ComposeResult:
        with Horizontal(id="fleet-bar"):
            yield Static("gpufleet", id="fleet-title")
            yield Static("", id="fleet-summary")
            yield SimulatedBadge(id="fleet-simulated")
        yield FleetTable(id="fleet-table", mask_rtt=self.mask_rtt)
        yield Static("", id="fleet-nomatch", markup=False)
        yield FilterInput(placeholder="filter: node, GPU, team, model or process (enter keeps, esc clears)",
                          id="fleet-filter")
        yield ConsoleFooter()

    def on_mount(self) -> None:
        self.query_one("#fleet-filter", Input).display = False
        self.query_one("#fleet-nomatch", Static).display = False
        self.refresh_fleet(force=True)
        self.query_one(FleetTable).focus()

    def on_screen_resume(self) -> None:
        self.refresh_fleet(force=True)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # A read-only console has no purge: hidden, not merely disabled.
        return not (action == "purge" and self.readonly)


    @property
    def table(self) -> FleetTable:
        return self.query_one(FleetTable)

    def refresh_fleet(self, *, force: bool = False) -> None:
        """Redraw from the state (called once per coalesced burst of updates)."""
        if not force and self._drawn_version == self.state.version:
            return
        self._drawn_version = self.state.version
        rows = self.state.rows(sort=self.sort, reverse=self.reverse, query=self.query_text)
        self.table.show(rows, sort=self.sort, reverse=self.reverse, now=self.clock())
        up, total, gpus = self.state.counts()
        summary = f"{up}/{total} nodes up · {gpus} GPUs · sort {self.sort}{' ▼' if self.reverse else ' ▲'}"
        matched = sum(1 for r in rows if r.kind == "gpu")
        if self.query_text:
            summary += f" · filter “{self.query_text}” ({matched} GPUs)"
        self._show_no_match(bool(self.query_text) and not matched)
        if self.readonly:
            summary += " · read-only"
        # One line of fixed size: a change needs no layout, and most polls change nothing here.
        set_text(self.query_one("#fleet-summary", Static), summary, layout=False)
        self.query_one(SimulatedBadge).set_on(self.state.simulated)

    def _show_no_match(self, no_match: bool) -> None:
        """A filter that matches nothing says so, rather than leaving an empty table."""
        message = self.query_one("#fleet-nomatch", Static)
        if no_match:
            set_text(message, f"No GPUs match “{self.query_text}” (Esc clears the filter)")
        if message.display != no_match:
            message.display = no_match
            self.table.display = not no_match

    # -- sorting and filtering ---------------------------------------------------------

    def set_sort(self, sort: SortKey, *, reverse: bool | None = None) -> None:
        if reverse is None:
            reverse = not self.reverse if sort == self.sort else sort not in ("node", "holder")
        self.sort, self.reverse = sort, reverse
        self.refresh_fleet(force=True)

    def action_sort_next(self) -> None:
        following = SORT_KEYS[(SORT_KEYS.index(self.sort) + 1) % len(SORT_KEYS)]
        self.set_sort(following, reverse=following not in ("node", "holder"))

    def action_sort_reverse(self) -> None:
        self.set_sort(self.sort, reverse=not self.reverse)

    @on(FleetTable.HeaderClicked)
    def _header_clicked(self, event: FleetTable.HeaderClicked) -> None:
        self.set_sort(event.sort)

    def action_filter(self) -> None:
        box = self.query_one("#fleet-filter", Input)
        box.display = True
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#fleet-filter", Input)
        box.value = ""
        box.display = False
        self.table.focus()

    @on(Input.Changed, "#fleet-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.query_text = event.value
        self.refresh_fleet(force=True)

    @on(Input.Submitted, "#fleet-filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        if self.query_one("#fleet-nomatch", Static).display:
            return  # nothing to move to: the box keeps the keys so the text can be fixed
        if not event.value:
            event.input.display = False
        self.table.focus()

    # -- navigation ----------------------------------------------------------------

    @on(FleetTable.Selected)
    def _row_selected(self, event: FleetTable.Selected) -> None:
        row = event.row
        if row.kind == "gpu" and row.gpu is not None:
            self.app.open_detail(row.node.name, row.gpu.index)  # type: ignore[attr-defined]
            return
        # A node row has no detail screen of its own: say where the details are instead of ignoring Enter.
        hint = f"{row.node.name} is a node: move to one of its GPUs (↓) and press Enter for details"
        if not self.readonly:
            hint += "; p on the node row purges the whole node"
        self.notify(hint + ".", title="Node row", timeout=6)

    def action_purge(self) -> None:
        row: FleetRow | None = self.table.current
        if row is None or self.readonly:
            return
        indices = [row.gpu.index] if row.kind == "gpu" and row.gpu is not None else None
        self.app.open_purge(row.node.name, indices)  # type: ignore[attr-defined]

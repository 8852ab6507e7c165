"""The fleet screen: every GPU of every node, grouped or flat, or every GPU process; sortable and filterable.

A status line (view, sort, filter and its count) and a summary line (nodes up
and in trouble, GPUs busy and idle, memory, power, utilization, GPUs over a
threshold) sit above the table. Live updates keep the view still (the cursor
keeps its place on screen); a key the user presses keeps the cursor on its row.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Literal

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Input, Static

from gpufleet.console.state import (
    ASCENDING_FIRST,
    PROC_SORT_KEYS,
    SORT_KEYS,
    WIDE_PROC_SORT_KEYS,
    WIDE_SORT_KEYS,
    FleetRow,
    FleetState,
    ProcessRow,
    ProcSortKey,
    RowQuery,
    SortKey,
)
from gpufleet.console.widgets.badges import SimulatedBadge, set_text
from gpufleet.console.widgets.fleet_table import WIDE_FROM, FleetTable
from gpufleet.console.widgets.footer import ConsoleFooter
from gpufleet.console.widgets.line_table import LineTable
from gpufleet.console.widgets.process_table import COMPACT_BELOW as PROCESS_COLUMNS_FROM
from gpufleet.console.widgets.process_table import ProcessTable
from gpufleet.console.widgets.summary import (
    fitted,
    markup,
    status_variants,
    summary_variants,
    totals,
)

View = Literal["grouped", "flat", "processes"]
FILTER_PLACEHOLDER = "filter: node, GPU, team, model, process, user, PID, or down/hot/idle/busy (esc clears)"


class FilterInput(Input):
    """The filter box; while it has the keys, the footer says Esc clears it (the placeholder is gone)."""

    BINDINGS = [Binding("escape", "screen.clear_filter", "Clear filter", id="fleet.filter_box_clear",
                        tooltip="Clear the filter and show every GPU")]


class FleetScreen(Screen[None]):
    """The console's home: a live table of the fleet."""

    HELP_WIDGETS = (FleetTable, ProcessTable)
    # Keys the footer leaves out below a width (help and the command palette list them).
    FOOTER_HIDE_BELOW = {"sort_reverse": 140, "switch_mode('events')": 140, "switch_mode('hosts')": 100}

    BINDINGS = [
        Binding("slash", "filter", "Filter", id="fleet.filter",
                tooltip="Filter by node, GPU, team, model, process, user, PID or state (down, hot, idle, busy)"),
        Binding("s", "sort_next", "Sort", id="fleet.sort", tooltip="Sort by the next column"),
        Binding("r", "sort_reverse", "Reverse", id="fleet.reverse", tooltip="Reverse the sort order"),
        Binding("v", "toggle_flat", "View", id="fleet.view",
                tooltip="Grouped by node / every GPU in one flat list"),
        Binding("o", "toggle_processes", "Procs", id="fleet.processes",
                tooltip="Every GPU process of the fleet / back to the GPUs"),
        Binding("p", "purge", "Purge", id="fleet.purge",
                tooltip="Purge the GPU (or node) under the cursor; in the process view, the process's GPU"),
        Binding("space", "toggle_node", "Fold node", show=False, id="fleet.fold",
                tooltip="Fold or unfold the node under the cursor (Enter on a node row too)"),
        Binding("left", "fold(True)", "Fold", show=False, id="fleet.fold_left",
                tooltip="Fold the node of the row under the cursor"),
        Binding("right", "fold(False)", "Unfold", show=False, id="fleet.unfold_right",
                tooltip="Unfold the node under the cursor"),
        Binding("z", "toggle_all_nodes", "Fold all", show=False, id="fleet.fold_all",
                tooltip="Fold every node, or unfold them all"),
        Binding("F", "toggle_follow", "Follow", show=False, id="fleet.follow",
                tooltip="Follow the selected GPU when live values re-sort the list (htop's F)"),
        Binding("escape", "clear_filter", "Clear filter", show=False, id="fleet.clear_filter",
                tooltip="Clear the filter and show every GPU"),
    ]

    def __init__(self, state: FleetState, *, clock: Callable[[], datetime], readonly: bool,
                 mask_rtt: bool = False, trouble_first: bool = True, follow: bool = False,
                 view: View = "grouped") -> None:
        super().__init__(id="fleet")
        self.state = state
        self.clock = clock
        self.readonly = readonly
        self.mask_rtt = mask_rtt
        self.trouble_first = trouble_first
        self.follow = follow
        self.view: View = view
        self._gpu_view: View = view if view != "processes" else "grouped"  # where `o` goes back to
        self.sort: SortKey = "node"
        self.reverse = False
        self.proc_sort: ProcSortKey = "gpu_memory"
        self.proc_reverse = True
        self.query_text = ""
        self.collapsed: set[str] = set()
        self._drawn_version = -1
        self._status_args: tuple[object, ...] = ()

    def compose(self) -> ComposeResult:
        with Horizontal(id="fleet-bar"):
            yield Static("gpufleet", id="fleet-title")
            yield Static("", id="fleet-status")
            yield SimulatedBadge(id="fleet-simulated")
        yield Static("", id="fleet-summary")
        yield FleetTable(id="fleet-table", mask_rtt=self.mask_rtt, levels=self.state.levels)
        yield ProcessTable(id="process-table")
        yield Static("", id="fleet-nomatch", markup=False)
        yield FilterInput(placeholder=FILTER_PLACEHOLDER, id="fleet-filter")
        yield ConsoleFooter()

    def on_mount(self) -> None:
        self.query_one("#fleet-filter", Input).display = False
        self.query_one("#fleet-nomatch", Static).display = False
        self._show_view()
        self.refresh_fleet(force=True)

    def on_screen_resume(self) -> None:
        self.refresh_fleet(force=True)

    def on_resize(self) -> None:
        self.refresh_fleet(force=True)

    @property
    def table(self) -> FleetTable:
        return self.query_one(FleetTable)

    @property
    def process_table(self) -> ProcessTable:
        return self.query_one(ProcessTable)

    @property
    def active_table(self) -> LineTable:  # type: ignore[type-arg]
        return self.process_table if self.view == "processes" else self.table

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "purge":
            # A read-only console has no purge (the app says so when its key is pressed).
            return not self.readonly
        if action in ("toggle_node", "fold", "toggle_all_nodes"):
            return self.view == "grouped"
        if action == "toggle_flat":
            return self.view != "processes"
        return True

    # -- drawing -------------------------------------------------------------------

    def refresh_fleet(self, *, force: bool = False, follow: bool | None = None) -> None:
        """Redraw from the state (called once per coalesced burst of updates, and on every key).

        ``follow`` (default: the follow setting for live updates) keeps the cursor on its row;
        otherwise the view and the cursor's place on screen stay still while values move.
        """
        if not force and self._drawn_version == self.state.version:
            return
        self._drawn_version = self.state.version
        keep_row = self.follow if follow is None else follow
        width = self.size.width or self.app.size.width
        if self.view == "processes":
            procs = self.state.process_rows(sort=self.proc_sort, reverse=self.proc_reverse, query=self.query_text)
            self.process_table.show(procs, sort=self.proc_sort, reverse=self.proc_reverse, follow=keep_row)
            matched, of, noun = len(procs), self._process_count(), "processes"
            sort, reverse = str(self.proc_sort).replace("_", " "), self.proc_reverse
            empty = not procs
        else:
            rows = self.state.rows(RowQuery(sort=self.sort, reverse=self.reverse, query=self.query_text,
                                            flat=self.view == "flat", collapsed=frozenset(self.collapsed),
                                            trouble_first=self.trouble_first))
            self.table.show_fleet(rows, sort=self.sort, reverse=self.reverse, now=self.clock(),
                                  flat=self.view == "flat", follow=keep_row)
            matched = self._matched_gpus(rows)
            of, noun = self.state.counts()[2], "GPUs"
            sort, reverse = str(self.sort).replace("_", " "), self.reverse
            empty = not rows
        self._show_no_match(bool(self.query_text) and empty, noun)
        # The title takes 10 cells, the SIMULATED badge 11 and two blank ones before it.
        room = max(10, width - 10 - (13 if self.state.simulated else 0))
        status = fitted(status_variants(self.view, sort, reverse, self.query_text, matched, of, noun,
                                        self.readonly), room)
        # One line of fixed size: a change needs no layout, and most polls change nothing here.
        set_text(self.query_one("#fleet-status", Static), markup(status), layout=False)
        summary = fitted(summary_variants(totals(self.state)), max(10, width - 2))
        set_text(self.query_one("#fleet-summary", Static), markup(summary), layout=False)
        self.query_one(SimulatedBadge).set_on(self.state.simulated)

    def _matched_gpus(self, rows: list[FleetRow]) -> int:
        """GPUs the filter lets through, folded nodes' and (flat) troubled nodes' included."""
        return self.state.matched_gpus

    def _process_count(self) -> int:
        return sum(len(n.status.processes) for n in self.state.nodes.values() if n.status)

    def _show_no_match(self, no_match: bool, noun: str) -> None:
        """A filter that matches nothing says so, rather than leaving an empty table."""
        message = self.query_one("#fleet-nomatch", Static)
        if no_match:
            set_text(message, f"No {noun} match “{self.query_text}” (Esc clears the filter)")
        if message.display != no_match:
            message.display = no_match
            self.active_table.display = not no_match

    def _show_view(self) -> None:
        processes = self.view == "processes"
        self.table.display = not processes
        self.process_table.display = processes
        if not isinstance(self.app.focused, Input):
            self.active_table.focus()  # the focus change refreshes the bindings (and the footer)

    # -- views ---------------------------------------------------------------------

    def set_view(self, view: View) -> None:
        if view == self.view:
            return
        row = self.active_table.current
        self.view = view
        if view != "processes":
            self._gpu_view = view
        self._show_view()
        # The new view starts on what was selected: the GPU of a process, or the process's GPU.
        if isinstance(row, ProcessRow) and row.proc.gpu_index is not None:
            self.table.follow_key((row.node.name, row.proc.gpu_index))
        elif isinstance(row, FleetRow) and view == "processes" and row.gpu is not None:
            gpu_key = row.key
            self.refresh_fleet(force=True, follow=True)
            match = next((r.key for r in self.process_table.rows
                          if (r.node.name, r.proc.gpu_index) == gpu_key), None)
            if match is not None:
                self.process_table.move_to(match)
            return
        self.refresh_fleet(force=True, follow=True)

    def action_toggle_flat(self) -> None:
        self.set_view("flat" if self.view == "grouped" else "grouped")

    def action_toggle_processes(self) -> None:
        self.set_view(self._gpu_view if self.view == "processes" else "processes")

    def action_toggle_follow(self) -> None:
        self.follow = not self.follow
        self.notify("The cursor follows its GPU as values move." if self.follow
                    else "The view stays still; the cursor keeps its place on screen.",
                    title=f"Follow {'on' if self.follow else 'off'}", timeout=4)

    # -- folding -------------------------------------------------------------------

    def _node_under_cursor(self) -> str | None:
        row = self.table.current
        return row.node.name if isinstance(row, FleetRow) else None

    def _set_folded(self, name: str, folded: bool) -> None:
        if folded == (name in self.collapsed):
            return
        if folded:
            self.collapsed.add(name)
        else:
            self.collapsed.discard(name)
        self.table.follow_key((name, None))  # the cursor lands on the node row
        self.refresh_fleet(force=True, follow=True)

    def action_toggle_node(self) -> None:
        name = self._node_under_cursor()
        if name is not None:
            self._set_folded(name, name not in self.collapsed)

    def action_fold(self, fold: bool) -> None:
        name = self._node_under_cursor()
        if name is not None:
            self._set_folded(name, fold)

    def action_toggle_all_nodes(self) -> None:
        name = self._node_under_cursor()
        everything = set(self.state.nodes)
        self.collapsed = set() if self.collapsed >= everything else everything
        if name is not None:
            self.table.follow_key((name, None))
        self.refresh_fleet(force=True, follow=True)

    # -- sorting and filtering ---------------------------------------------------------

    def _sort_keys(self) -> tuple[str, ...]:
        width = self.size.width or self.app.size.width
        if self.view == "processes":
            return PROC_SORT_KEYS + WIDE_PROC_SORT_KEYS if width >= PROCESS_COLUMNS_FROM else PROC_SORT_KEYS
        return SORT_KEYS + WIDE_SORT_KEYS if width >= WIDE_FROM else SORT_KEYS

    def set_sort(self, sort: str, *, reverse: bool | None = None) -> None:
        current, current_reverse = (self.proc_sort, self.proc_reverse) if self.view == "processes" \
            else (self.sort, self.reverse)
        if reverse is None:
            reverse = not current_reverse if sort == current else sort not in ASCENDING_FIRST
        if self.view == "processes":
            self.proc_sort, self.proc_reverse = sort, reverse  # type: ignore[assignment]
        else:
            self.sort, self.reverse = sort, reverse  # type: ignore[assignment]
        self.refresh_fleet(force=True, follow=True)

    def action_sort_next(self) -> None:
        keys = self._sort_keys()
        current = self.proc_sort if self.view == "processes" else self.sort
        following = keys[(keys.index(current) + 1) % len(keys)] if current in keys else keys[0]
        self.set_sort(following, reverse=following not in ASCENDING_FIRST)

    def action_sort_reverse(self) -> None:
        current = self.proc_sort if self.view == "processes" else self.sort
        reverse = self.proc_reverse if self.view == "processes" else self.reverse
        self.set_sort(current, reverse=not reverse)

    @on(LineTable.HeaderClicked)
    def _header_clicked(self, event: LineTable.HeaderClicked) -> None:
        self.set_sort(event.sort)

    def action_filter(self) -> None:
        box = self.query_one("#fleet-filter", Input)
        box.display = True
        # At once, not after the queued events (Widget.focus): letters typed right after `/`
        # (fast typing, a paste, a terminal multiplexer) are the filter's, never keys like `o`.
        self.set_focus(box)

    def action_clear_filter(self) -> None:
        box = self.query_one("#fleet-filter", Input)
        box.value = ""
        box.display = False
        self.active_table.focus()

    @on(Input.Changed, "#fleet-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.query_text = event.value
        self.refresh_fleet(force=True, follow=True)

    @on(Input.Submitted, "#fleet-filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        if self.query_one("#fleet-nomatch", Static).display:
            return  # nothing to move to: the box keeps the keys so the text can be fixed
        if not event.value:
            event.input.display = False
        self.active_table.focus()

    # -- navigation ----------------------------------------------------------------

    @on(LineTable.Selected)
    def _row_selected(self, event: LineTable.Selected) -> None:
        row = event.row
        if isinstance(row, ProcessRow):
            if row.proc.gpu_index is None:
                self.notify(f"PID {row.proc.pid} on {row.node.name} names no GPU.", title="No GPU", timeout=5)
                return
            self.app.open_detail(row.node.name, row.proc.gpu_index)  # type: ignore[attr-defined]
            return
        if row.kind == "gpu" and row.gpu is not None:
            self.app.open_detail(row.node.name, row.gpu.index)  # type: ignore[attr-defined]
            return
        if self.view == "grouped":
            self._set_folded(row.node.name, row.node.name not in self.collapsed)
            return
        self.notify(f"{row.node.name} is {row.node.failure_text()}: its GPUs show in the grouped view (v).",
                    title="Node row", timeout=6)

    def action_purge(self) -> None:
        """Purge the GPU under the cursor, the whole node on a node row, or a process's GPU."""
        row = self.active_table.current
        if self.readonly:
            return
        if isinstance(row, ProcessRow):
            if row.proc.gpu_index is not None:
                self.app.open_purge(row.node.name, [row.proc.gpu_index])  # type: ignore[attr-defined]
            return
        if not isinstance(row, FleetRow):
            return
        indices = [row.gpu.index] if row.kind == "gpu" and row.gpu is not None else None
        self.app.open_purge(row.node.name, indices)  # type: ignore[attr-defined]

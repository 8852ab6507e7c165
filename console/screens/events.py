"""The event log: every change of node health (and GPU trouble) since the console started, newest first."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from datetime import datetime

from rich.segment import Segment
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Static

from gpufleet.console.events import Event, EventLog
from gpufleet.console.widgets.badges import set_text
from gpufleet.console.widgets.footer import ConsoleFooter
from gpufleet.console.widgets.format import ago
from gpufleet.console.widgets.line_table import Column, LineTable, fit, fit_middle

SEVERITY_ROLES = {"information": "ok", "warning": "warn", "error": "crit"}
SEVERITY_WORDS = {"information": "ok", "warning": "warn", "error": "ERROR"}


def event_layout(width: int) -> list[Column]:
    wide = width >= 100
    fixed = [
        Column(None, "TIME", 21 if wide else 10, name="time"),
        Column(None, "AGO", 9, ">", name="ago"),
        Column(None, " LEVEL", 7, name="severity"),
        Column(None, "NODE", 16 if wide else 12, name="node"),
    ]
    used = sum(c.width for c in fixed)
    return [*fixed, Column(None, "WHAT", max(8, width - used), name="text")]


class EventTable(LineTable[Event]):
    """The log's lines: time, age, severity, node and what happened."""

    BINDINGS = [Binding("enter", "select", "GPU detail", id="events.select",
                        tooltip="Open the GPU an event names")]

    def __init__(self, *, clock: Callable[[], datetime], id: str | None = None) -> None:
        super().__init__(id=id)
        self.clock = clock

    @staticmethod
    def row_key(row: Event) -> Hashable:
        return (row.at, row.node, row.gpu, row.text)

    def columns(self, width: int) -> list[Column]:
        return event_layout(width)

    def row_segments(self, row: Event, width: int) -> list[Segment]:
        role = SEVERITY_ROLES[row.severity]
        wide = width >= 100
        stamp = f"{row.at:%Y-%m-%d %H:%M:%S}Z" if wide else f"{row.at:%H:%M:%S}Z"
        node = row.node if row.gpu is None else f"{row.node}/{row.gpu}"
        # NODE already says which GPU: WHAT gives its room to what happened.
        what = row.text.removeprefix(f"{row.node} GPU {row.gpu}: ") if row.gpu is not None else row.text
        cells = {
            "time": (stamp, None),
            "ago": (ago(row.at, self.clock()), "dim"),
            "severity": (" " + SEVERITY_WORDS[row.severity], role),
            "node": (node, None),
            "text": (" " + what, None),
        }
        segments = []
        for column in event_layout(width):
            text, cell_role = cells[column.name]
            if column.name == "node":  # node names differ at their end: cut in the middle
                cell = fit_middle(text, column.width - 1) + " "
            else:
                cell = (fit(text, column.width - (0 if column.align == ">" else 1), column.align)
                        + ("" if column.align == ">" else " "))
            segments.append(Segment(cell, self._style(cell_role)))
        return segments


class EventLogScreen(Screen[None]):
    """Node outages, recoveries, refused tokens, stale nodes and GPU trouble, with their times."""

    HELP_SECTION = "Event log"
    HELP_WIDGETS = (EventTable,)
    AUTO_FOCUS = "#events-table"

    BINDINGS = [Binding("escape", "app.switch_mode('fleet')", "Fleet", id="events.back", show=False,
                        tooltip="Back to the fleet")]

    def __init__(self, log: EventLog, *, clock: Callable[[], datetime]) -> None:
        super().__init__(id="events")
        self.event_log = log
        self.clock = clock
        self._drawn = -1

    def compose(self) -> ComposeResult:
        with Horizontal(id="events-bar"):
            yield Static("Event log", id="events-title")
            yield Static("", id="events-count")
        yield Static("No events yet: node outages, recoveries and GPU trouble are listed here as they happen.",
                     id="events-empty")
        yield EventTable(clock=self.clock, id="events-table")
        yield ConsoleFooter()

    def on_mount(self) -> None:
        self.refresh_fleet(force=True)

    def on_screen_resume(self) -> None:
        self.refresh_fleet(force=True)

    def refresh_fleet(self, *, force: bool = False) -> None:
        """Redraw when the log grew (the app calls this on every fleet update)."""
        if not force and self._drawn == self.event_log.version:
            return
        self._drawn = self.event_log.version
        events = self.event_log.newest_first()
        table = self.query_one(EventTable)
        table.show(events, sort="", reverse=False, follow=True)
        empty = not events
        self.query_one("#events-empty", Static).display = empty
        table.display = not empty
        errors = sum(1 for e in events if e.severity == "error")
        set_text(self.query_one("#events-count", Static),
                 f"{len(events)} events · {errors} errors · times in UTC")

    @on(LineTable.Selected)
    def _event_selected(self, event: LineTable.Selected) -> None:
        row: Event = event.row
        if row.gpu is not None:
            self.app.open_detail(row.node, row.gpu)  # type: ignore[attr-defined]
        else:
            self.notify(f"{row.node}: the event is about the node; the fleet (f) shows it.",
                        title="Node event", timeout=4)

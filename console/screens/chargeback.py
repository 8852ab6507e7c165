"""Chargeback: a period's cost, GPU-hours, energy and idle time by team, with drill-down and CSV export.

Mount with ``ChargebackScreen(source, clock=..., simulated=...)`` where ``source``
is a :class:`console.datasource.DataSource`. Workers only fetch and post
messages; the message handlers own every state change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import date
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, DataTable, Input, Label, Static

from gpufleet.console.datasource import DataSource, DataSourceError
from gpufleet.console.export import (
    ConfirmOverwriteModal,
    ExportError,
    ExportPathModal,
    default_export_path,
    display_path,
    write_csv,
)
from gpufleet.console.period import PERIOD_NAMES, Period, PeriodError, PeriodKind, utc_today
from gpufleet.console.screens.drilldown import TeamDrilldownModal
from gpufleet.console.widgets.footer import ConsoleFooter
from gpufleet.console.widgets.format import hours, money, numeric, share_bar
from gpufleet.server.schemas import ChargebackReport

__all__ = ["ChargebackScreen", "TeamDrilldownModal"]

# The four period keys share one footer slot; the buttons above the summary spell each one out.
PERIOD_KEYS = Binding.Group("Period")


class ChargebackScreen(Screen[None]):
    """The chargeback view of one period, fetched from a DataSource."""

    AUTO_FOCUS = "#cb-teams"

    BINDINGS = [
        Binding("m", "period('this_month')", "This month", id="chargeback.this_month", group=PERIOD_KEYS),
        Binding("w", "period('last_7_days')", "Last 7 days", id="chargeback.last_7_days", group=PERIOD_KEYS),
        Binding("p", "period('last_month')", "Last month", id="chargeback.last_month", group=PERIOD_KEYS),
        Binding("c", "custom_period", "Custom dates", id="chargeback.custom", group=PERIOD_KEYS),
        # Enter on a team row reaches the table first (RowSelected); this binding is what the
        # help lists and what a remapped key (chargeback.drilldown) runs.
        Binding("enter", "drill_down", "Team detail", show=False, id="chargeback.drilldown",
                tooltip="Architectures and models of the team under the cursor"),
        Binding("e", "export_csv", "Export CSV", id="chargeback.export"),
        Binding("r", "reload", "Reload", id="chargeback.reload"),
        Binding("escape", "close_custom", "Close dates", id="chargeback.close_custom",
                tooltip="Close the custom dates form"),
    ]

    DEFAULT_CSS = """
    ChargebackScreen { layout: vertical; }
    ChargebackScreen #cb-title-row { height: 1; padding: 0 1; }
    ChargebackScreen #cb-title { text-style: bold; width: 1fr; }
    ChargebackScreen .badge { background: $warning; color: $text; padding: 0 1; text-style: bold; }
    ChargebackScreen #cb-periods { height: 1; padding: 0 1; margin-top: 1; }
    ChargebackScreen #cb-periods Button { margin-right: 1; }
    ChargebackScreen #cb-periods Button.-active { background: $primary; color: $text; text-style: bold; }
    ChargebackScreen #cb-custom { height: auto; padding: 0 1; display: none; margin-top: 1; }
    ChargebackScreen.-custom #cb-custom { display: block; }
    ChargebackScreen #cb-custom-row { height: 3; }
    ChargebackScreen #cb-custom Input { width: 18; }
    ChargebackScreen #cb-custom Label { padding: 1 1 0 0; }
    ChargebackScreen #cb-apply { margin: 1 0 0 2; }
    ChargebackScreen #cb-custom-error { color: $text-error; height: auto; }
    ChargebackScreen #cb-summary { height: 2; padding: 0 1; margin-top: 1; }
    ChargebackScreen .stat { width: 1fr; height: 2; }
    ChargebackScreen .stat-name { color: $text-muted; }
    ChargebackScreen .stat-value { text-style: bold; color: $text-accent; }
    ChargebackScreen #cb-message { height: auto; padding: 1 2; display: none; }
    ChargebackScreen.-empty #cb-message, ChargebackScreen.-failed #cb-message { display: block; }
    ChargebackScreen.-failed #cb-message { color: $text-error; }
    ChargebackScreen.-empty #cb-teams, ChargebackScreen.-failed #cb-teams { display: none; }
    ChargebackScreen #cb-teams { height: 1fr; margin-top: 1; }
    """

    class ReportLoaded(Message):
        def __init__(self, period: Period, report: ChargebackReport) -> None:
            super().__init__()
            self.period = period
            self.report = report

    class ReportFailed(Message):
        def __init__(self, period: Period, message: str) -> None:
            super().__init__()
            self.period = period
            self.message = message

    class ExportFinished(Message):
        def __init__(self, path: Path) -> None:
            super().__init__()
            self.path = path

    class ExportFailed(Message):
        def __init__(self, message: str) -> None:
            super().__init__()
            self.message = message

    def __init__(self, source: DataSource, *, clock: Callable[[], date] = utc_today,
                 simulated: bool = False, export_dir: Path | None = None,
                 name: str | None = None, id: str | None = None) -> None:
        super().__init__(name=name, id=id)
        self._source = source
        self._clock = clock
        self._simulated = simulated
        self._export_dir = export_dir
        self.period = Period.preset("this_month", clock())
        self.report: ChargebackReport | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="cb-title-row"):
            yield Label("Chargeback", id="cb-title")
            # Shown from the start when the fleet is simulated, then as each report says: the
            # store may hold real data behind a simulated fleet, or simulated behind a real one.
            badge = Label("SIMULATED DATA", classes="badge", id="cb-simulated")
            badge.display = self._simulated
            yield badge
        with Horizontal(id="cb-periods"):
            for kind, name in PERIOD_NAMES.items():
                yield Button(name + ("…" if kind == "custom" else ""), id=f"period-{kind}",
                             compact=True)
        with Vertical(id="cb-custom"):
            with Horizontal(id="cb-custom-row"):
                yield Label("From")
                yield Input(placeholder="YYYY-MM-DD", id="cb-from", max_length=10)
                yield Label(" To")
                yield Input(placeholder="YYYY-MM-DD", id="cb-to", max_length=10)
                yield Button("Apply", id="cb-apply", compact=True)
            yield Static("", id="cb-custom-error")
        with Horizontal(id="cb-summary"):
            for stat, name in (("cost", "Cost"), ("gpu-hours", "GPU-hours"),
                               ("energy", "Energy"), ("idle", "Idle GPU-hours")):
                with Vertical(classes="stat"):
                    yield Label(name, classes="stat-name")
                    yield Label("—", id=f"stat-{stat}", classes="stat-value")
        yield Static("", id="cb-message")
        yield DataTable(id="cb-teams", cursor_type="row", zebra_stripes=True)
        yield ConsoleFooter()

    def on_mount(self) -> None:
        self.query_one("#cb-teams", DataTable).add_columns(
            "Team", numeric("Cost"), numeric("GPU-h"), numeric("Energy kWh"), numeric("Idle GPU-h"),
            "Share of cost")
        self._load(self.period)

    # -- loading -----------------------------------------------------------

    def _load(self, period: Period) -> None:
        self.period = period
        self.query_one("#cb-title", Label).update(f"Chargeback · {period.label}")
        for button in self.query("#cb-periods Button"):
            button.set_class(button.id == f"period-{period.kind}", "-active")
        self.query_one("#cb-teams", DataTable).loading = True
        self._fetch_report(period)

    @work(exclusive=True, group="chargeback-report")
    async def _fetch_report(self, period: Period) -> None:
        try:
            report = await self._source.chargeback_report(period.from_, period.to)
        except DataSourceError as exc:
            self.post_message(self.ReportFailed(period, str(exc)))
            return
        self.post_message(self.ReportLoaded(period, report))

    @on(ReportLoaded)
    def _show_report(self, message: ReportLoaded) -> None:
        if message.period != self.period:
            return  # an answer for a period the user already left
        self.report = report = message.report
        self.query_one("#cb-simulated").display = report.simulated
        summary = report.summary
        self.query_one("#stat-cost", Label).update(money(summary.total_cost_usd))
        self.query_one("#stat-gpu-hours", Label).update(hours(summary.total_gpu_hours))
        self.query_one("#stat-energy", Label).update(f"{hours(summary.energy_kwh)} kWh")
        self.query_one("#stat-idle", Label).update(hours(summary.idle_gpu_hours))
        table = self.query_one("#cb-teams", DataTable)
        table.loading = False
        table.clear()
        self._focus_teams()
        bar_width = 20 if self.size.width >= 110 else 10
        for team in sorted(report.teams, key=lambda t: (-t.total_cost_usd, t.team_id)):
            table.add_row(team.team_id, numeric(money(team.total_cost_usd)),
                          numeric(hours(team.total_gpu_hours)), numeric(hours(team.energy_kwh)),
                          numeric(hours(team.idle_gpu_hours)),
                          share_bar(team.total_cost_usd, summary.total_cost_usd, bar_width),
                          key=team.team_id)
        empty = not report.teams
        self.set_class(empty, "-empty")
        self.set_class(False, "-failed")
        if empty:
            self.query_one("#cb-message", Static).update(
                f"No usage in this period ({self.period.from_} → {self.period.to}).\n"
                "Try another period, or check that agents are reporting (Hosts).")

    @on(ReportFailed)
    def _show_failure(self, message: ReportFailed) -> None:
        if message.period != self.period:
            return
        self.report = None
        self.query_one("#cb-teams", DataTable).loading = False
        self._focus_teams()
        for stat in ("cost", "gpu-hours", "energy", "idle"):
            self.query_one(f"#stat-{stat}", Label).update("—")
        self.set_class(False, "-empty")
        self.set_class(True, "-failed")
        self.query_one("#cb-message", Static).update(
            f"Could not load chargeback: {message.message}\nPress r to retry.")

    def _focus_teams(self) -> None:
        """Give the team table the keys again once it has loaded, unless the user is typing dates.

        A loading table cannot hold focus, so focusing it before the answer arrives is lost.
        """
        if self.custom_open and self._focus_in_custom_form():
            return
        self.query_one("#cb-teams", DataTable).focus()

    def _focus_in_custom_form(self) -> bool:
        focused = self.focused
        return focused is not None and self.query_one("#cb-custom") in focused.ancestors_with_self

    # -- period selection --------------------------------------------------

    @property
    def custom_open(self) -> bool:
        """Whether the custom dates form is shown."""
        return self.has_class("-custom")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Esc belongs to the form only while it is open; otherwise it is not this screen's key.
        return self.custom_open if action == "close_custom" else True

    def _close_custom(self) -> None:
        """Hide the dates form; a hidden input must not keep the focus (it would eat every key)."""
        if self._focus_in_custom_form():
            self.set_focus(None)
        self.remove_class("-custom")
        self.refresh_bindings()

    def action_close_custom(self) -> None:
        self._close_custom()
        self._focus_teams()

    def action_period(self, kind: PeriodKind) -> None:
        self._close_custom()
        self._load(Period.preset(kind, self._clock()))

    def action_reload(self) -> None:
        self._load(self._current(self.period))

    def on_screen_resume(self) -> None:
        # A mode's screen lives on while the user is elsewhere: back after midnight, a
        # preset ("This month" on the 1st) names other days now, so it is fetched again.
        if self.is_mounted and (period := self._current(self.period)) != self.period:
            self._load(period)

    def _current(self, period: Period) -> Period:
        """A preset taken again from today's clock (presets are relative); custom dates stay."""
        return period if period.kind == "custom" else Period.preset(period.kind, self._clock())

    def action_custom_period(self) -> None:
        self.add_class("-custom")
        self.refresh_bindings()
        self.query_one("#cb-from", Input).value = self.period.from_.isoformat()
        self.query_one("#cb-to", Input).value = self.period.to.isoformat()
        self.query_one("#cb-custom-error", Static).update("")
        self.query_one("#cb-from", Input).focus()

    @on(Button.Pressed, "#cb-periods Button")
    def _period_button(self, event: Button.Pressed) -> None:
        kind = (event.button.id or "").removeprefix("period-")
        if kind == "custom":
            self.action_custom_period()
        else:
            self.action_period(kind)  # type: ignore[arg-type]

    @on(Input.Submitted, "#cb-from")
    def _next_field(self) -> None:
        self.query_one("#cb-to", Input).focus()

    @on(Input.Submitted, "#cb-to")
    @on(Button.Pressed, "#cb-apply")
    def apply_custom(self) -> None:
        error = self.query_one("#cb-custom-error", Static)
        try:
            period = Period.custom(self.query_one("#cb-from", Input).value,
                                   self.query_one("#cb-to", Input).value)
        except PeriodError as exc:
            error.update(str(exc))
            return
        error.update("")
        self._close_custom()
        self._load(period)

    # -- drill-down ---------------------------------------------------------

    @on(DataTable.RowSelected, "#cb-teams")
    def _drill_down(self, event: DataTable.RowSelected) -> None:
        self._open_team(event.row_key.value)

    def action_drill_down(self) -> None:
        table = self.query_one("#cb-teams", DataTable)
        if table.row_count:
            self._open_team(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def _open_team(self, team_id: str | None) -> None:
        if self.report is None:
            return
        team = next((t for t in self.report.teams if t.team_id == team_id), None)
        if team is not None:
            self.app.push_screen(TeamDrilldownModal(team, self.period))

    # -- export -------------------------------------------------------------

    @property
    def simulated(self) -> bool:
        """Whether the figures on screen are simulated: as the report says, once there is one."""
        return self.report.simulated if self.report is not None else self._simulated

    def action_export_csv(self) -> None:
        period = self.period
        simulated = self.simulated
        suggested = default_export_path(period.from_, period.to, self._export_dir, simulated=simulated)
        self.app.push_screen(ExportPathModal(suggested, period.label, simulated=simulated),
                             lambda path: self._export_to(path, period))

    def _export_to(self, path: Path | None, period: Period) -> None:
        if path is None:
            return
        if path.exists():
            self.app.push_screen(
                ConfirmOverwriteModal(path),
                lambda yes: self._export_csv(path, period, overwrite=True) if yes else None)
        else:
            self._export_csv(path, period, overwrite=False)

    @work(exclusive=True, group="chargeback-export")
    async def _export_csv(self, path: Path, period: Period, *, overwrite: bool) -> None:
        try:
            text = await self._source.chargeback_csv(period.from_, period.to)
            await asyncio.to_thread(write_csv, path, text, overwrite=overwrite)
        except (DataSourceError, ExportError) as exc:
            self.post_message(self.ExportFailed(str(exc)))
            return
        self.post_message(self.ExportFinished(path))

    @on(ExportFinished)
    def _export_done(self, message: ExportFinished) -> None:
        mark = " (SIMULATED DATA, not billable)" if self.simulated else ""
        self.notify(f"Saved {display_path(message.path)}{mark}", title="CSV exported", markup=False)

    @on(ExportFailed)
    def _export_failed(self, message: ExportFailed) -> None:
        self.notify(message.message, title="Export failed", severity="error")

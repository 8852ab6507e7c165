"""A team's chargeback drilled down: its usage by GPU architecture and by model.

Shared GPUs show as the GPU-hours billed as a share ("Shared") beside each model,
and as one line under the totals when the team had any.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label, Static

from gpufleet.console.period import Period
from gpufleet.console.widgets.format import hours, money, numeric, share_bar
from gpufleet.server.schemas import TeamUsage


class TeamDrilldownModal(ModalScreen[None]):
    """One team's usage by GPU architecture and by model."""

    BINDINGS = [Binding("escape,enter", "dismiss_drilldown", "Close", id="drilldown.close")]

    DEFAULT_CSS = """
    TeamDrilldownModal { align: center middle; }
    TeamDrilldownModal > Vertical {
        width: 110; max-width: 100%; height: auto; max-height: 100%;
        border: thick $primary; background: $surface; padding: 0 1;
    }
    TeamDrilldownModal .drill-title { text-style: bold; color: $text-accent; }
    TeamDrilldownModal .drill-heading { text-style: bold; margin-top: 1; }
    TeamDrilldownModal DataTable { height: auto; max-height: 10; }
    TeamDrilldownModal .drill-hint { color: $text-muted; margin-top: 1; }
    """

    def __init__(self, team: TeamUsage, period: Period) -> None:
        super().__init__()
        self._team = team
        self._period = period

    def compose(self) -> ComposeResult:
        team = self._team
        with Vertical():
            yield Label(f"Team {team.team_id} · {self._period.label}", classes="drill-title")
            yield Static(
                f"Cost {money(team.total_cost_usd)}   GPU-hours {hours(team.total_gpu_hours)}   "
                f"Energy {hours(team.energy_kwh)} kWh   Idle {hours(team.idle_gpu_hours)} GPU-h"
            )
            if team.shared_gpu_hours:
                yield Static(f"Shared {hours(team.shared_gpu_hours)} GPU-h: its share of GPUs other "
                             "workloads used at the same time", id="drill-shared")
            yield Label("By GPU architecture", classes="drill-heading")
            yield DataTable(id="drill-gpus", cursor_type="row", zebra_stripes=True)
            yield Label("By model", classes="drill-heading")
            yield DataTable(id="drill-models", cursor_type="row", zebra_stripes=True)
            yield Label("esc close", classes="drill-hint")

    def on_mount(self) -> None:
        gpus = self.query_one("#drill-gpus", DataTable)
        gpus.add_columns("Architecture", *map(numeric, ("GPU-h", "Rate $/h", "Cost", "Energy kWh",
                                                        "Idle GPU-h")))
        for arch in sorted(self._team.by_gpu, key=lambda a: -a.cost_usd):
            figures = (hours(arch.gpu_hours), f"{arch.rate:.2f}", money(arch.cost_usd),
                       hours(arch.energy_kwh), hours(arch.idle_gpu_hours))
            gpus.add_row(arch.gpu_arch, *map(numeric, figures), key=arch.gpu_arch)
        models = self.query_one("#drill-models", DataTable)
        # "Shared": GPU-hours billed as a share of a GPU other workloads used at the same time
        models.add_columns("Model", *map(numeric, ("GPU-h", "Shared", "Cost", "Energy kWh")),
                           "Share of cost")
        for model in sorted(self._team.by_model, key=lambda m: -m.cost_usd):
            shared = hours(model.shared_gpu_hours) if model.shared_gpu_hours else "—"
            models.add_row(model.model_tag, numeric(hours(model.gpu_hours)), numeric(shared),
                           numeric(money(model.cost_usd)), numeric(hours(model.energy_kwh)),
                           share_bar(model.cost_usd, self._team.total_cost_usd, 10),
                           key=model.model_tag)

    def action_dismiss_drilldown(self) -> None:
        self.dismiss(None)

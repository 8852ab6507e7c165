"""Chargeback, export, hosts and help screens driven by pilot against a real server."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, Label, Static

from gpufleet.console.export import ConfirmOverwriteModal, ExportPathModal
from gpufleet.console.screens.chargeback import ChargebackScreen, TeamDrilldownModal
from gpufleet.console.screens.help import HelpScreen, collect_bindings
from gpufleet.console.screens.hosts import HostsScreen
from tests.legibility import illegible_text
from tests.test_console_data_fixtures import (
    FROZEN_TODAY,
    DataScreensApp,
    LiveServer,
    serve_module,
    settle,
    start_live_server,
)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    yield from serve_module(tmp_path_factory)


def row_keys(table: DataTable) -> list[str]:
    return [str(row.key.value) for row in table.ordered_rows]


def chargeback_app(server: LiveServer, tmp_path: Path) -> DataScreensApp:
    return DataScreensApp(server.url, server.key, lambda source: ChargebackScreen(
        source, clock=lambda: FROZEN_TODAY, export_dir=tmp_path))


async def test_chargeback_opens_on_this_month_with_teams_by_cost(live_server: LiveServer,
                                                                 tmp_path: Path) -> None:
    app = chargeback_app(live_server, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, ChargebackScreen)
        assert (screen.period.from_.isoformat(), screen.period.to.isoformat()) == (
            "2026-03-01", "2026-03-17")
        assert row_keys(screen.query_one("#cb-teams", DataTable)) == ["ml-infra", "search"]
        report = screen.report
        assert report is not None and report.summary.total_cost_usd > 0
        assert "$" in str(screen.query_one("#stat-cost").render())


async def test_period_change_reloads_the_report(live_server: LiveServer, tmp_path: Path) -> None:
    app = chargeback_app(live_server, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("p")  # last month
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, ChargebackScreen)
        assert screen.period.kind == "last_month"
        assert (screen.period.from_.isoformat(), screen.period.to.isoformat()) == (
            "2026-02-01", "2026-02-28")
        assert row_keys(screen.query_one("#cb-teams", DataTable)) == ["vision"]
        await pilot.click("#period-last_7_days")
        await settle(pilot)
        assert screen.period.from_.isoformat() == "2026-03-11"
        assert set(row_keys(screen.query_one("#cb-teams", DataTable))) == {"ml-infra", "search"}


async def test_enter_on_a_team_drills_into_architectures_and_models(
        live_server: LiveServer, tmp_path: Path) -> None:
    app = chargeback_app(live_server, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("enter")
        await pilot.pause()
        modal = app.screen
        assert isinstance(modal, TeamDrilldownModal)
        assert row_keys(modal.query_one("#drill-gpus", DataTable)) == ["H100"]
        # the three-hour fine-tune on two GPUs costs more than the one-hour eval
        models = modal.query_one("#drill-models", DataTable)
        assert row_keys(models) == ["llama3-70b-finetune", "mistral-7b-eval"]
        # the eval shared its H100 half and half with search's reranker: its half hour is shared
        assert [str(models.get_row(key)[2]) for key in ("llama3-70b-finetune", "mistral-7b-eval")] == \
            ["—", "0.5"]  # none: the console's dash for no figure, as in the fleet
        shared = modal.query_one("#drill-shared", Static)
        assert str(shared.render()).startswith("Shared 0.5 GPU-h")
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, ChargebackScreen)


INVALID_PERIODS = [
    ("2026-13-01", "2026-03-31", "From: 2026-13-01 is not a calendar date (month 01-12, day within the month)"),
    ("2026-03-01", "31/03/2026", "To: enter a date as YYYY-MM-DD"),
    ("2026-03-10", "2026-03-01", "From must be on or before To"),
    ("2025-01-01", "2026-03-01", "A period spans at most 366 days"),
]


async def test_custom_dates_are_validated_inline(live_server: LiveServer, tmp_path: Path) -> None:
    app = chargeback_app(live_server, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, ChargebackScreen)
        await pilot.press("c")
        for from_text, to_text, error in INVALID_PERIODS:
            screen.query_one("#cb-from", Input).value = from_text
            screen.query_one("#cb-to", Input).value = to_text
            screen.query_one("#cb-to", Input).focus()
            await pilot.press("enter")
            await settle(pilot)
            assert str(screen.query_one("#cb-custom-error", Static).render()) == error
            assert screen.period.kind == "this_month"  # the invalid period was not loaded
        screen.query_one("#cb-from", Input).value = "2025-03-18"  # exactly 366 days
        screen.query_one("#cb-to", Input).value = "2026-03-18"
        await pilot.click("#cb-apply")
        await settle(pilot)
        assert str(screen.query_one("#cb-custom-error", Static).render()) == ""
        assert (screen.period.kind, screen.period.from_.isoformat()) == ("custom", "2025-03-18")
        assert set(row_keys(screen.query_one("#cb-teams", DataTable))) == {
            "ml-infra", "search", "vision"}


async def test_custom_empty_period_says_so(live_server: LiveServer, tmp_path: Path) -> None:
    app = chargeback_app(live_server, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, ChargebackScreen)
        await pilot.press("c")
        screen.query_one("#cb-from", Input).value = "2026-01-01"
        screen.query_one("#cb-to", Input).value = "2026-01-31"
        screen.query_one("#cb-to", Input).focus()
        await pilot.press("enter")
        await settle(pilot)
        assert screen.period.kind == "custom"
        assert screen.has_class("-empty")
        assert "No usage in this period" in str(screen.query_one("#cb-message", Static).render())
        assert not screen.query_one("#cb-teams", DataTable).display


async def test_csv_export_writes_the_servers_csv(live_server: LiveServer, tmp_path: Path) -> None:
    target = tmp_path / "march.csv"
    app = chargeback_app(live_server, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("e")
        await pilot.pause()
        modal = app.screen
        assert isinstance(modal, ExportPathModal)
        modal.query_one("#export-path", Input).value = str(target)
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, ChargebackScreen)
        notes = [n.message for n in app._notifications]
    expected = live_server.csv(FROZEN_TODAY.replace(day=1), FROZEN_TODAY)
    assert target.read_text(encoding="utf-8") == expected
    assert expected.splitlines()[0].startswith("team_id,model_tag,gpu_arch,gpu_hours")
    assert any("llama3-70b-finetune" in line for line in expected.splitlines())
    assert any(str(target) in note for note in notes)


async def test_the_simulated_mark_follows_the_store_and_the_export_carries_it(
        live_server: LiveServer, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The badge said what the live fleet was, not what the report was billed from; a CSV never said it."""
    # A simulated fleet over a store of real data (a `serve` of real data is running): no badge
    # once the report has said so, and a plain file name.
    app = DataScreensApp(live_server.url, live_server.key, lambda source: ChargebackScreen(
        source, clock=lambda: FROZEN_TODAY, simulated=True, export_dir=tmp_path))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert not app.screen.query_one("#cb-simulated").display
        await pilot.press("e")
        await pilot.pause()
        assert app.screen.query_one("#export-path", Input).value.endswith("/chargeback-2026-03-01-to-2026-03-17.csv")
    # A store of simulated data, the chargeback opened before any node answered: marked, and the
    # export's name, its dialog and its notice say so.
    simulated, stop = start_live_server(tmp_path_factory.mktemp("simulated"), simulate=True)
    try:
        app = DataScreensApp(simulated.url, simulated.key, lambda source: ChargebackScreen(
            source, clock=lambda: FROZEN_TODAY, export_dir=tmp_path))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot)
            assert app.screen.query_one("#cb-simulated").display
            await pilot.press("e")
            await pilot.pause()
            modal = app.screen
            assert isinstance(modal, ExportPathModal)
            assert "SIMULATED DATA" in str(modal.query_one("#export-title", Label).render())
            path = modal.query_one("#export-path", Input).value
            assert path.endswith("/chargeback-simulated-2026-03-01-to-2026-03-17.csv")
            await pilot.press("enter")
            await settle(pilot)
            assert any(path in n.message and "SIMULATED DATA" in n.message for n in app._notifications)
    finally:
        stop()
    assert (tmp_path / "chargeback-simulated-2026-03-01-to-2026-03-17.csv").read_text().startswith("team_id,")


async def test_existing_file_needs_confirmation(live_server: LiveServer, tmp_path: Path) -> None:
    target = tmp_path / "report.csv"
    target.write_text("keep me\n")
    app = chargeback_app(live_server, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        for confirm in (False, True):
            await pilot.press("e")
            await pilot.pause()
            app.screen.query_one("#export-path", Input).value = str(target)
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, ConfirmOverwriteModal)
            await pilot.click("#overwrite-confirm" if confirm else "#overwrite-cancel")
            await settle(pilot)
            assert isinstance(app.screen, ChargebackScreen)
            if not confirm:
                assert target.read_text() == "keep me\n"
    assert target.read_text().startswith("team_id,")


async def test_hosts_show_alive_stale_and_offline(live_server: LiveServer) -> None:
    app = DataScreensApp(live_server.url, live_server.key,
                         lambda source: HostsScreen(source, clock=live_server.now, refresh_s=None))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, HostsScreen)
        table = screen.query_one("#hosts-table", DataTable)
        assert row_keys(table) == ["gpu-node-03", "gpu-node-02", "gpu-node-01"]
        statuses = [str(table.get_row(key)[0]) for key in row_keys(table)]
        assert statuses == ["● offline", "● stale", "● alive"]
        assert str(table.get_row("gpu-node-01")[4]).startswith("1m ago")
        assert str(screen.query_one("#hosts-count-alive").render()) == "● 1 alive"


async def test_help_lists_every_binding_with_the_keymap_applied(live_server: LiveServer,
                                                                tmp_path: Path) -> None:
    app = chargeback_app(live_server, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        app.update_keymap({"chargeback.export": "x"})
        entries = {e.binding_id: e for e in collect_bindings(app, [ChargebackScreen, HostsScreen])}
        assert entries["chargeback.export"].keys == "x"
        assert entries["app.help"].description == "Help"
        assert {"chargeback.this_month", "chargeback.custom", "hosts.reload"} <= entries.keys()
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        help_rows = app.screen.query_one("#help-table", DataTable).row_count
        assert help_rows == len(entries)
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("x")  # the remapped key exports
        await pilot.pause()
        assert isinstance(app.screen, ExportPathModal)


async def test_the_console_app_mounts_chargeback_and_hosts(live_server: LiveServer) -> None:
    from gpufleet.console.app import GpuFleetApp
    from gpufleet.console.datasource import ClientDataSource
    from gpufleet.server.config import ConsoleSettings

    source = ClientDataSource.connect(live_server.url, live_server.key)
    # Light: the cost figures and host states were drawn in bar colours, unreadable there.
    app = GpuFleetApp(ConsoleSettings(theme="textual-light"), [], data_source=source, clock=live_server.now)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("c")
            await settle(pilot)
            assert isinstance(app.screen, ChargebackScreen)
            assert row_keys(app.screen.query_one("#cb-teams", DataTable)) == ["ml-infra", "search"]
            assert illegible_text(app) == []
            await pilot.press("h")
            await settle(pilot)
            assert isinstance(app.screen, HostsScreen)
            assert app.screen.query_one("#hosts-table", DataTable).row_count == 3
            assert illegible_text(app) == []
    finally:
        await source.aclose()


async def test_a_preset_period_follows_the_clock_past_midnight(live_server: LiveServer,
                                                               tmp_path: Path) -> None:
    # Left open over the end of February: "This month" must become March on reload (r) and
    # on coming back to the screen, not stay February under March's name.
    from gpufleet.console.app import GpuFleetApp
    from gpufleet.console.datasource import ClientDataSource
    from gpufleet.server.config import ConsoleSettings

    now = [datetime(2026, 2, 28, 23, 59, 50, tzinfo=UTC)]
    source = ClientDataSource.connect(live_server.url, live_server.key)
    app = GpuFleetApp(ConsoleSettings(), [], data_source=source, clock=lambda: now[0])
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("c")
            await settle(pilot)
            screen = app.screen
            assert isinstance(screen, ChargebackScreen)
            assert (screen.period.from_, screen.period.to) == (date(2026, 2, 1), date(2026, 2, 28))
            assert row_keys(screen.query_one("#cb-teams", DataTable)) == ["vision"]
            now[0] = datetime(2026, 3, 17, 0, 0, 5, tzinfo=UTC)
            await pilot.press("r")
            await settle(pilot)
            assert (screen.period.kind, screen.period.from_, screen.period.to) == (
                "this_month", date(2026, 3, 1), date(2026, 3, 17))
            assert row_keys(screen.query_one("#cb-teams", DataTable)) == ["ml-infra", "search"]
            assert "2026-03-01 → 2026-03-17" in str(screen.query_one("#cb-title", Label).render())
            await pilot.press("w", "f")  # last 7 days, then away over another midnight
            now[0] = datetime(2026, 3, 19, 0, 0, 5, tzinfo=UTC)
            await pilot.press("c")
            await settle(pilot)
            assert app.screen is screen
            assert (screen.period.kind, screen.period.from_, screen.period.to) == (
                "last_7_days", date(2026, 3, 13), date(2026, 3, 19))
            assert row_keys(screen.query_one("#cb-teams", DataTable)) == []
    finally:
        await source.aclose()


async def test_reload_keeps_custom_dates(live_server: LiveServer, tmp_path: Path) -> None:
    today = [FROZEN_TODAY]
    app = DataScreensApp(live_server.url, live_server.key, lambda source: ChargebackScreen(
        source, clock=lambda: today[0], export_dir=tmp_path))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, ChargebackScreen)
        await pilot.press("c")
        screen.query_one("#cb-from", Input).value = "2026-02-01"
        screen.query_one("#cb-to", Input).value = "2026-02-28"
        screen.query_one("#cb-to", Input).focus()
        await pilot.press("enter")
        await settle(pilot)
        assert (screen.period.kind, screen.period.from_) == ("custom", date(2026, 2, 1))
        today[0] = date(2026, 4, 2)
        await pilot.press("escape", "r")
        await settle(pilot)
        assert (screen.period.kind, screen.period.from_, screen.period.to) == (
            "custom", date(2026, 2, 1), date(2026, 2, 28))
        assert row_keys(screen.query_one("#cb-teams", DataTable)) == ["vision"]


async def test_the_hosts_badge_follows_the_store(live_server: LiveServer,
                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    """The demo fleet beside a `serve` of real data marked that server's real hosts SIMULATED DATA."""
    app = DataScreensApp(live_server.url, live_server.key, lambda source: HostsScreen(
        source, clock=live_server.now, refresh_s=None, simulated=True))
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert app.screen.query_one("#hosts-table", DataTable).row_count == 3
        assert not app.screen.query_one("#hosts-simulated").display
    simulated, stop = start_live_server(tmp_path_factory.mktemp("simulated-hosts"), simulate=True)
    try:
        app = DataScreensApp(simulated.url, simulated.key, lambda source: HostsScreen(
            source, clock=simulated.now, refresh_s=None))
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot)
            assert app.screen.query_one("#hosts-simulated").display
    finally:
        stop()

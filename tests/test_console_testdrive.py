"""Defects found in a test drive of the console, each driven by pilot against a real server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import pytest
from rich.text import Text
from textual.widgets import DataTable, Input
from textual.widgets._footer import FooterKey

from gpufleet.console.datasource import DataSource
from gpufleet.console.demo_heartbeat import DemoHeartbeats, DemoHost
from gpufleet.console.screens.chargeback import ChargebackScreen, TeamDrilldownModal
from gpufleet.console.screens.help import HelpScreen
from gpufleet.console.screens.hosts import HostsScreen
from gpufleet.server.schemas import ChargebackReport, HostInfo, HostsResponse
from tests.test_console_data_fixtures import (
    FROZEN_NOW,
    FROZEN_TODAY,
    DataScreensApp,
    LiveServer,
    serve_module,
    settle,
)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    yield from serve_module(tmp_path_factory)


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server over simulated data, like the console's demo store: demo nodes report there."""
    yield from serve_module(tmp_path_factory, simulate=True)


class GatedSource:
    """A DataSource whose chargeback answers wait for ``gate``: the table is still loading meanwhile."""

    def __init__(self, inner: DataSource) -> None:
        self.inner = inner
        self.gate = asyncio.Event()

    async def chargeback_report(self, from_: date, to: date) -> ChargebackReport:
        await self.gate.wait()
        return await self.inner.chargeback_report(from_, to)

    async def chargeback_csv(self, from_: date, to: date) -> str:
        return await self.inner.chargeback_csv(from_, to)

    async def hosts(self) -> HostsResponse:
        return await self.inner.hosts()


def gated_app(server: LiveServer, tmp_path: Path) -> tuple[DataScreensApp, list[GatedSource]]:
    gated: list[GatedSource] = []

    def make(source: DataSource) -> ChargebackScreen:
        gated.append(GatedSource(source))
        return ChargebackScreen(gated[0], clock=lambda: FROZEN_TODAY, export_dir=tmp_path)

    return DataScreensApp(server.url, server.key, make), gated


async def test_team_table_has_focus_once_a_slow_report_arrives(live_server: LiveServer,
                                                               tmp_path: Path) -> None:
    app, gated = gated_app(live_server, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ChargebackScreen)
        assert screen.query_one("#cb-teams", DataTable).loading
        gated[0].gate.set()
        await settle(pilot)
        assert app.focused is screen.query_one("#cb-teams", DataTable)
        await pilot.press("enter")  # no click or tab needed to drill down
        await pilot.pause()
        assert isinstance(app.screen, TeamDrilldownModal)


async def test_keys_work_after_applying_custom_dates(live_server: LiveServer, tmp_path: Path) -> None:
    app, gated = gated_app(live_server, tmp_path)
    gate_open = True
    async with app.run_test(size=(120, 40)) as pilot:
        gated[0].gate.set()
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, ChargebackScreen)
        table = screen.query_one("#cb-teams", DataTable)
        await pilot.press("c")
        assert app.focused is screen.query_one("#cb-from", Input)
        gated[0].gate.clear()  # the custom report is slow: Apply returns while the table loads
        gate_open = False
        await pilot.press("home", "ctrl+k", *"2026-02-01", "tab", "home", "ctrl+k", *"2026-03-17", "enter")
        await pilot.pause()
        assert screen.period.kind == "custom" and table.loading
        assert not screen.custom_open
        assert not isinstance(app.focused, Input)  # a hidden date field must not eat the keys
        gated[0].gate.set()
        gate_open = True
        await settle(pilot)
        assert app.focused is table
        assert [str(r.key.value) for r in table.ordered_rows] == ["ml-infra", "search", "vision"]
        await pilot.press("p")  # a period key works straight away ...
        await settle(pilot)
        assert screen.period.kind == "last_month"
        assert app.focused is table  # ... and focus lands on the table after it too
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, TeamDrilldownModal)
    assert gate_open


@pytest.mark.parametrize("key", ["m", "w", "p"])
async def test_every_period_key_leaves_focus_on_the_team_table(live_server: LiveServer,
                                                              tmp_path: Path, key: str) -> None:
    app, gated = gated_app(live_server, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        gated[0].gate.set()
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, ChargebackScreen)
        await pilot.press("c")  # from inside the date form, too
        await pilot.press("escape")
        await pilot.press(key)
        await settle(pilot)
        assert app.focused is screen.query_one("#cb-teams", DataTable)


async def test_escape_closes_the_custom_form_not_the_screen(live_server: LiveServer,
                                                           tmp_path: Path) -> None:
    app, gated = gated_app(live_server, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        gated[0].gate.set()
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, ChargebackScreen)
        await pilot.press("c")
        assert screen.custom_open and screen.query_one("#cb-custom").display
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is screen
        assert not screen.custom_open
        assert app.focused is screen.query_one("#cb-teams", DataTable)
        assert screen.period.kind == "this_month"  # closing the form loads nothing
        await pilot.press("escape")  # with the form closed, esc is not the screen's
        await pilot.pause()
        assert app.screen is screen


async def test_help_lists_chargeback_and_hosts_bindings(live_server: LiveServer) -> None:
    from gpufleet.console.app import GpuFleetApp
    from gpufleet.console.datasource import ClientDataSource
    from gpufleet.server.config import ConsoleSettings

    source = ClientDataSource.connect(live_server.url, live_server.key)
    app = GpuFleetApp(ConsoleSettings(), [], data_source=source, clock=live_server.now)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        table = app.screen.query_one("#help-table", DataTable)
        ids = {str(table.get_row_at(i)[3]) for i in range(table.row_count)}
        sections = {str(table.get_row_at(i)[0]) for i in range(table.row_count)} - {""}
        assert {"chargeback.custom", "chargeback.export", "chargeback.close_custom",
                "hosts.reload", "fleet.filter", "purge.cancel"} <= ids
        # Enter opens a GPU and a team: the help says so (the fleet's keys live on its table)
        assert {"table.select", "table.down", "chargeback.drilldown"} <= ids
        assert {"Chargeback", "Hosts"} <= sections
    # the app closed the data source it was given (its HTTP client) on the way out
    assert source._client._http.is_closed  # type: ignore[attr-defined]


async def test_hosts_screen_is_compact_at_80_columns(live_server: LiveServer) -> None:
    app = DataScreensApp(live_server.url, live_server.key,
                         lambda source: HostsScreen(source, clock=live_server.now, refresh_s=None))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, HostsScreen)
        table = screen.query_one("#hosts-table", DataTable)
        assert table.virtual_size.width <= table.size.width  # no column off screen
        counts = screen.query_one("#hosts-counts")
        assert all(label.region.right <= counts.region.right for label in counts.children)


def demo_host(server: LiveServer, hostname: str) -> HostInfo:
    from gpufleet.server.client import GpuFleetClient

    with GpuFleetClient(server.url, api_key=server.key) as client:
        return next(h for h in client.hosts().hosts if h.hostname == hostname)


def test_one_demo_heartbeat_round_advances_last_seen(demo_server: LiveServer) -> None:
    beats = DemoHeartbeats(demo_server.url, demo_server.key, [DemoHost("demo-node-01", 8)],
                           interval_s=300)
    earlier = FROZEN_NOW - timedelta(minutes=30)
    demo_server.clock.now = earlier  # the server stamps heartbeats with its own clock
    try:
        assert beats.beat_once() == 1
        first = demo_host(demo_server, "demo-node-01")
        assert (first.last_heartbeat, first.agent_version, first.gpu_count) == (earlier, "simulated", 8)
        demo_server.clock.now = FROZEN_NOW
        assert beats.beat_once() == 1
    finally:
        demo_server.clock.now = FROZEN_NOW
    again = demo_host(demo_server, "demo-node-01")
    assert again.last_heartbeat == FROZEN_NOW > first.last_heartbeat
    assert again.status == "alive"


def test_demo_heartbeats_keep_beating_until_stopped(demo_server: LiveServer) -> None:
    beats = DemoHeartbeats(demo_server.url, demo_server.key, [DemoHost("demo-node-02", 2)],
                           interval_s=0.01)  # raised to the 1 s floor
    assert beats.interval_s == 1.0
    beats.start()
    try:
        deadline = time.monotonic() + 15
        while beats.beats < 2 and time.monotonic() < deadline:  # the first beat, then the next round
            time.sleep(0.05)
        assert beats.beats >= 2
    finally:
        beats.stop()
    stopped_at = beats.beats
    assert beats._thread is None
    assert beats.beat_once() == 1 and beats.beats == stopped_at + 1  # rounds only when asked now


def test_demo_heartbeats_never_reach_a_server_of_real_data(caplog: pytest.LogCaptureFixture,
                                                           live_server: LiveServer) -> None:
    beats = DemoHeartbeats(live_server.url, live_server.key, [DemoHost("demo-node-04", 1)],
                           interval_s=60)
    assert beats.beat_once() == 0
    assert "stores real data only" in caplog.text
    from gpufleet.server.client import GpuFleetClient

    with GpuFleetClient(live_server.url, api_key=live_server.key) as client:
        assert "demo-node-04" not in {h.hostname for h in client.hosts().hosts}


def test_a_failed_heartbeat_is_logged_not_raised(caplog: pytest.LogCaptureFixture,
                                                 live_server: LiveServer) -> None:
    beats = DemoHeartbeats(live_server.url, "not-a-key", [DemoHost("demo-node-03", 1)], interval_s=60)
    assert beats.beat_once() == 0
    assert "demo heartbeat for demo-node-03 failed" in caplog.text
    assert "not-a-key" not in caplog.text


async def test_the_console_opens_chargeback_with_the_team_table_focused(live_server: LiveServer) -> None:
    from gpufleet.console.app import GpuFleetApp
    from gpufleet.console.datasource import ClientDataSource
    from gpufleet.server.config import ConsoleSettings

    source = GatedSource(ClientDataSource.connect(live_server.url, live_server.key))
    app = GpuFleetApp(ConsoleSettings(), [], data_source=source, clock=live_server.now)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("c")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ChargebackScreen)
        assert screen.query_one("#cb-teams", DataTable).loading
        source.gate.set()
        await settle(pilot)
        assert app.focused is screen.query_one("#cb-teams", DataTable)
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, TeamDrilldownModal)
        await pilot.press("escape", "h")
        await settle(pilot)
        assert app.focused is app.screen.query_one("#hosts-table", DataTable)
        await pilot.press("c")  # back again: the mode's screen still has its table focused
        await pilot.pause()
        assert app.focused is screen.query_one("#cb-teams", DataTable)
    await source.inner.aclose()  # type: ignore[attr-defined]


async def test_a_remapped_drilldown_key_opens_the_team_under_the_cursor(live_server: LiveServer) -> None:
    from gpufleet.console.app import GpuFleetApp
    from gpufleet.console.datasource import ClientDataSource
    from gpufleet.server.config import ConsoleSettings

    source = ClientDataSource.connect(live_server.url, live_server.key)
    settings = ConsoleSettings(keybindings={"chargeback.drilldown": "d"})
    app = GpuFleetApp(settings, [], data_source=source, clock=live_server.now)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("c")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, ChargebackScreen)
        table = screen.query_one("#cb-teams", DataTable)
        keys = {key.key: key for key in screen.query(FooterKey)}
        assert keys["question_mark"].region.right <= 80  # Help stays on an 80-column footer
        assert "c" not in keys or keys["c"].action != "app.switch_mode('chargeback')"
        await pilot.press("down", "d")
        await pilot.pause()
        modal = app.screen
        assert isinstance(modal, TeamDrilldownModal)
        assert modal._team.team_id == str(table.ordered_rows[1].key.value)
        # figures are set flush right so their digits line up
        cost = table.get_row_at(0)[1]
        assert isinstance(cost, Text) and cost.justify == "right" and cost.plain.startswith("$")

"""Snapshots of the chargeback, drill-down, empty period, export, hosts and help screens.

A real server with a frozen clock serves the data; each screen is shot at
120x40 (comfortable) and 80x24 (the smallest supported terminal).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from gpufleet.console.screens.chargeback import ChargebackScreen
from gpufleet.console.screens.hosts import HostsScreen
from tests.test_console_data_fixtures import (
    FROZEN_TODAY,
    DataScreensApp,
    LiveServer,
    serve_module,
    settle,
)

SIZES = [pytest.param((120, 40), id="120x40"), pytest.param((80, 24), id="80x24")]
EXPORT_DIR = Path("/srv/finance")  # shown in the export modal, never written to


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    yield from serve_module(tmp_path_factory, simulate=True)  # a demo store: the screens say SIMULATED


def chargeback(server: LiveServer) -> DataScreensApp:
    return DataScreensApp(server.url, server.key, lambda source: ChargebackScreen(
        source, clock=lambda: FROZEN_TODAY, simulated=True, export_dir=EXPORT_DIR))


def then(*keys: str, custom: tuple[str, str] | None = None) -> Callable[[Pilot[None]], Awaitable[None]]:
    async def run_before(pilot: Pilot[None]) -> None:
        await settle(pilot)
        if custom is not None:
            await pilot.press("c")
            pilot.app.screen.query_one("#cb-from", Input).value = custom[0]
            pilot.app.screen.query_one("#cb-to", Input).value = custom[1]
            pilot.app.screen.query_one("#cb-to", Input).focus()
            await pilot.press("enter")
        await settle(pilot)
        for key in keys:
            await pilot.press(key)
            await settle(pilot)

    return run_before


@pytest.mark.parametrize("size", SIZES)
def test_chargeback_this_month(snap_compare, live_server: LiveServer, size) -> None:
    assert snap_compare(chargeback(live_server), terminal_size=size, run_before=then())


@pytest.mark.parametrize("size", SIZES)
def test_chargeback_drilldown(snap_compare, live_server: LiveServer, size) -> None:
    assert snap_compare(chargeback(live_server), terminal_size=size, run_before=then("enter"))


@pytest.mark.parametrize("size", SIZES)
def test_chargeback_empty_period(snap_compare, live_server: LiveServer, size) -> None:
    assert snap_compare(chargeback(live_server), terminal_size=size,
                        run_before=then(custom=("2026-01-01", "2026-01-31")))


@pytest.mark.parametrize("size", SIZES)
def test_chargeback_export_modal(snap_compare, live_server: LiveServer, size) -> None:
    assert snap_compare(chargeback(live_server), terminal_size=size, run_before=then("e"))


@pytest.mark.parametrize("size", SIZES)
def test_hosts(snap_compare, live_server: LiveServer, size) -> None:
    app = DataScreensApp(live_server.url, live_server.key, lambda source: HostsScreen(
        source, clock=live_server.now, refresh_s=None))
    assert snap_compare(app, terminal_size=size, run_before=then())


@pytest.mark.parametrize("size", SIZES)
def test_help(snap_compare, live_server: LiveServer, size) -> None:
    assert snap_compare(chargeback(live_server), terminal_size=size,
                        run_before=then("question_mark"))

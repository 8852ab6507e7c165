"""SVG snapshots of the fleet screen's views and its summary line, 80x24 and 120x40, light and dark.

The demo's four simulated nodes at the frozen hour: the L40S GPU 2 throttles on
heat, the A100 GPU 5 holds ECC errors and a pending row remap, so the marks,
the threshold colours and the over-threshold count all show.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

import pytest
from textual.pilot import Pilot

from gpufleet.console.app import GpuFleetApp
from gpufleet.server.config import ConsoleSettings
from tests.test_console_live_fixtures import Clock, EmbeddedFleet, all_polled, wait_for

HOUR = 3600.0
SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]
THEMES = [pytest.param("textual-dark", id="dark"), pytest.param("textual-light", id="light")]

RunBefore = Callable[[Pilot[None]], Awaitable[None]]


@pytest.fixture(scope="module")
def fleet() -> Iterator[EmbeddedFleet]:
    started = EmbeddedFleet(4)
    yield started
    started.close()


def app_for(fleet: EmbeddedFleet, theme: str = "textual-dark") -> GpuFleetApp:
    settings = ConsoleSettings(refresh_s=HOUR, request_timeout_s=2.0, theme=theme)
    return GpuFleetApp(settings, fleet.targets, clock=Clock(), refresh_s=HOUR, mask_rtt=True)


def polled_then(*keys: str) -> RunBefore:
    async def run_before(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, GpuFleetApp)
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        for key in keys:
            await pilot.press(key)
            await pilot.pause()
        await pilot.pause()

    return run_before


@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("size", SIZES)
def test_grouped(snap_compare, fleet: EmbeddedFleet, size: tuple[int, int], theme: str) -> None:
    assert snap_compare(app_for(fleet, theme), terminal_size=size, run_before=polled_then("down"))


@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("size", SIZES)
def test_flat_hottest_first(snap_compare, fleet: EmbeddedFleet, size: tuple[int, int], theme: str) -> None:
    assert snap_compare(app_for(fleet, theme), terminal_size=size,
                        run_before=polled_then("v", "s", "s", "s", "home"))


@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("size", SIZES)
def test_processes(snap_compare, fleet: EmbeddedFleet, size: tuple[int, int], theme: str) -> None:
    assert snap_compare(app_for(fleet, theme), terminal_size=size, run_before=polled_then("o"))


@pytest.mark.parametrize("size", SIZES)
def test_summary_with_an_outage_on_top(snap_compare, size: tuple[int, int]) -> None:
    """One node down: notified, on top of the list, counted in the summary line."""
    doomed = EmbeddedFleet(4)

    async def outage(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, GpuFleetApp)
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        doomed.stop_node("inf-l40s-01")
        app.clock.advance(minutes=3)  # type: ignore[attr-defined]
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.fleet.nodes["inf-l40s-01"].health == "down"
                       and bool(app._notifications)
                       and app.screen._drawn_version == app.fleet.version,  # type: ignore[attr-defined]
                       "the outage")
        await pilot.pause()

    try:
        assert snap_compare(app_for(doomed), terminal_size=size, run_before=outage)
    finally:
        doomed.close()


def test_event_log(snap_compare) -> None:
    doomed = EmbeddedFleet(4)

    async def outage_then_log(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, GpuFleetApp)
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        doomed.stop_node("ws-gpu-01")
        app.clock.advance(minutes=2)  # type: ignore[attr-defined]
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.fleet.nodes["ws-gpu-01"].health == "down"
                       and bool(app._notifications), "the outage and its toast")
        app.clock.advance(minutes=1)  # type: ignore[attr-defined]
        app.clear_notifications()
        await pilot.press("l")
        await pilot.pause()

    try:
        assert snap_compare(app_for(doomed), terminal_size=(120, 40), run_before=outage_then_log)
    finally:
        doomed.close()

"""SVG snapshots of the GPU detail over a real simulated node, with fourteen minutes of history.

The node and the console share one clock: each step moves it a minute and polls
(ctrl+r), so the graphs hold real simulated readings at known times and every
run draws the same picture. Both themes, at 80x24 and 120x40.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

import pytest
from textual.pilot import Pilot

from gpufleet.console.app import GpuFleetApp
from gpufleet.console.screens.detail import GpuDetailScreen
from gpufleet.console.screens.signal import SignalModal
from gpufleet.console.widgets.fleet_table import FleetTable
from tests.test_console_live_fixtures import Clock, EmbeddedFleet, all_polled, console_app, wait_for

NODE = "ws-gpu-01"  # GPU 1 holds two processes, one from another container
HOUR = 3600.0
MINUTES_OF_HISTORY = 14

RunBefore = Callable[[Pilot[None]], Awaitable[None]]


@pytest.fixture
def clocked() -> Iterator[tuple[EmbeddedFleet, Clock]]:
    clock = Clock()
    fleet = EmbeddedFleet(1, clock=clock)
    yield fleet, clock
    fleet.close()


async def history_then_detail(pilot: Pilot[None], clock: Clock, gpu: int, theme_keys: tuple[str, ...]) -> None:
    app = pilot.app
    assert isinstance(app, GpuFleetApp)
    await wait_for(pilot, lambda: all_polled(app), "the first answer")
    history = app.fleet.nodes[NODE].histories[gpu]
    for _ in range(MINUTES_OF_HISTORY):
        clock.advance(minutes=1)
        before = len(history)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: len(history) > before, "the next poll")  # noqa: B023
    assert app.screen.query_one(FleetTable).move_to((NODE, gpu))
    await pilot.press("enter", *theme_keys)
    await wait_for(pilot, lambda: isinstance(app.screen, GpuDetailScreen), "the detail screen")
    await pilot.pause()


def detail_with_history(clock: Clock, *, gpu: int = 1, light: bool = False) -> RunBefore:
    async def run_before(pilot: Pilot[None]) -> None:
        await history_then_detail(pilot, clock, gpu, ("t",) if light else ())

    return run_before


@pytest.mark.parametrize("light", [False, True], ids=["dark", "light"])
@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_detail(snap_compare, clocked: tuple[EmbeddedFleet, Clock], size: tuple[int, int],
                light: bool) -> None:
    fleet, clock = clocked
    app = console_app(fleet.targets, refresh_s=HOUR, clock=clock)
    assert snap_compare(app, terminal_size=size, run_before=detail_with_history(clock, light=light))


@pytest.mark.parametrize(("size", "light"), [((80, 24), False), ((120, 40), True)],
                         ids=["80x24-dark", "120x40-light"])
def test_signal_confirmation(snap_compare, clocked: tuple[EmbeddedFleet, Clock], size: tuple[int, int],
                             light: bool) -> None:
    fleet, clock = clocked
    app = console_app(fleet.targets, refresh_s=HOUR, clock=clock)

    async def run_before(pilot: Pilot[None]) -> None:
        await history_then_detail(pilot, clock, 1, ("t",) if light else ())
        await pilot.press("k")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, SignalModal), "the signal confirmation")
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=run_before)

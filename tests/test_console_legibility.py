"""Every word the console draws can be read in both themes: titles, badges, states, dialogs.

Found driving the console in textual-light: the titles, "History", "up", the SIM
badge and the purge and signal dialogs' warnings were drawn in the theme's bar
colours (orange and green at 1.3-1.8:1 on the light background).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gpufleet.console.app import GpuFleetApp
from gpufleet.console.screens.detail import GpuDetailScreen
from gpufleet.console.screens.purge import PurgeModal
from gpufleet.console.screens.signal import SignalModal
from gpufleet.console.widgets.fleet_table import FleetTable
from gpufleet.server.config import ConsoleSettings
from tests.legibility import illegible_text
from tests.test_console_live_fixtures import Clock, EmbeddedFleet, all_polled, wait_for

HOUR = 3600.0


@pytest.fixture(scope="module")
def fleet() -> Iterator[EmbeddedFleet]:
    started = EmbeddedFleet(4)
    yield started
    started.close()


async def test_every_screen_and_dialog_is_legible_in_light_and_dark(fleet: EmbeddedFleet) -> None:
    settings = ConsoleSettings(refresh_s=HOUR, request_timeout_s=2.0, theme="textual-light")
    app = GpuFleetApp(settings, fleet.targets, clock=Clock(), refresh_s=HOUR, mask_rtt=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        seen: dict[str, list[tuple[int, str, float]]] = {}

        async def look(name: str, *keys: str) -> None:
            await pilot.press(*keys)
            await pilot.pause()
            seen[name] = illegible_text(app)

        await look("grouped")
        await look("flat", "v")
        await look("processes", "o")
        await pilot.press("o", "v")
        app.screen.query_one(FleetTable).move_to(("inf-l40s-01", 3))
        await look("detail", "enter")
        assert isinstance(app.screen, GpuDetailScreen)
        await look("signal", "k")
        assert isinstance(app.screen, SignalModal)
        await pilot.press("escape")
        await look("purge", "p")
        assert isinstance(app.screen, PurgeModal)
        await pilot.press("escape", "escape")
        await look("event log", "l")
        await look("help", "question_mark")
        await pilot.press("escape", "f")
        await look("grouped, dark", "t")  # dark themes draw the same roles: one look is enough
        assert {name: found for name, found in seen.items() if found} == {}

"""SVG snapshots of the live screens over real simulated nodes, with a frozen clock.

Determinism: the simulator and the console share a frozen clock, round-trip
times are masked, node names (not URLs) are shown, and the refresh interval is
an hour so each node is polled exactly as often as the test asks (ctrl+r).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

import pytest
from textual.pilot import Pilot

from gpufleet.console.app import GpuFleetApp
from gpufleet.console.screens.purge import PurgeModal
from gpufleet.console.widgets.fleet_table import FleetTable
from gpufleet.server.config import RuntimeSettings
from tests.fakes.ollama_server import FakeOllama
from tests.test_console_live_fixtures import EmbeddedFleet, all_polled, console_app, wait_for

SIZES = [(120, 40), (80, 24)]
H100 = "dgx-h100-01"
HOUR = 3600.0

RunBefore = Callable[[Pilot[None]], Awaitable[None]]


@pytest.fixture(scope="module")
def fleet() -> Iterator[EmbeddedFleet]:
    started = EmbeddedFleet(3)
    yield started
    started.close()


@pytest.fixture
def fresh(fleet: EmbeddedFleet) -> EmbeddedFleet:
    fleet.reset()  # a purge in one test must not show in the next
    return fleet


def app_for(fleet: EmbeddedFleet, **kwargs: object) -> GpuFleetApp:
    return console_app(fleet.targets, refresh_s=HOUR, **kwargs)  # type: ignore[arg-type]


def polled_then(*steps: Callable[[Pilot[None]], Awaitable[None]]) -> RunBefore:
    async def run_before(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, GpuFleetApp)
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        for step in steps:
            await step(pilot)
        await pilot.pause()

    return run_before


def cursor_to(key: tuple[str, int | None]) -> Callable[[Pilot[None]], Awaitable[None]]:
    async def step(pilot: Pilot[None]) -> None:
        assert pilot.app.screen.query_one(FleetTable).move_to(key)

    return step


def press(*keys: str) -> Callable[[Pilot[None]], Awaitable[None]]:
    async def step(pilot: Pilot[None]) -> None:
        await pilot.press(*keys)
        await pilot.pause()

    return step


async def purge_done(pilot: Pilot[None]) -> None:
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, PurgeModal), "the purge modal")
    modal = pilot.app.screen
    assert isinstance(modal, PurgeModal)
    await pilot.click("#purge-go")
    await wait_for(pilot, lambda: modal.result is not None or modal.error is not None, "the purge")


@pytest.mark.parametrize("size", SIZES)
def test_fleet(snap_compare, fresh: EmbeddedFleet, size: tuple[int, int]) -> None:
    assert snap_compare(app_for(fresh), terminal_size=size, run_before=polled_then())


@pytest.mark.parametrize("size", SIZES)
def test_fleet_filtered_and_sorted(snap_compare, fresh: EmbeddedFleet, size: tuple[int, int]) -> None:
    assert snap_compare(app_for(fresh), terminal_size=size,
                        run_before=polled_then(press("s", "s", "slash", *"infer", "enter")))


@pytest.mark.parametrize("size", SIZES)
def test_purge_confirmation(snap_compare, fresh: EmbeddedFleet, size: tuple[int, int]) -> None:
    assert snap_compare(app_for(fresh), terminal_size=size,
                        run_before=polled_then(cursor_to((H100, None)), press("p")))


@pytest.mark.parametrize("size", SIZES)
def test_purge_result(snap_compare, fresh: EmbeddedFleet, size: tuple[int, int]) -> None:
    assert snap_compare(app_for(fresh), terminal_size=size,
                        run_before=polled_then(cursor_to((H100, None)), press("p"), purge_done))


@pytest.mark.parametrize("size", SIZES)
def test_purge_result_with_errors(snap_compare, size: tuple[int, int]) -> None:
    with FakeOllama() as ollama:
        ollama.load("qwen3:32b", 20480, keep_alive=None)
        ollama.fail_unload("qwen3:32b", 500, "llama runner crashed")
        errored = EmbeddedFleet(1, runtimes=[RuntimeSettings(type="ollama", url=ollama.url)])
        try:
            assert snap_compare(app_for(errored), terminal_size=size,
                                run_before=polled_then(cursor_to(("ws-gpu-01", None)), press("p"), purge_done))
        finally:
            errored.close()


@pytest.mark.parametrize("size", SIZES)
def test_unreachable_node(snap_compare, size: tuple[int, int]) -> None:
    doomed = EmbeddedFleet(3)

    async def node_dies(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, GpuFleetApp)
        doomed.stop_node(H100)
        app.clock.advance(minutes=7)  # type: ignore[attr-defined]
        await pilot.press("ctrl+r")
        node = app.fleet.nodes[H100]
        others = [n for n in app.fleet.nodes.values() if n is not node]
        await wait_for(pilot, lambda: node.reachable is False
                       and all(len(n.histories[0]) == 2 for n in others)
                       and app.screen._drawn_version == app.fleet.version,  # type: ignore[attr-defined]
                       "the node to be marked unreachable")

    try:
        assert snap_compare(app_for(doomed), terminal_size=size, run_before=polled_then(node_dies))
    finally:
        doomed.close()


async def force_typed(pilot: Pilot[None]) -> None:
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, PurgeModal), "the purge modal")
    await pilot.click("#purge-force")
    await pilot.press(*H100)
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES)
def test_purge_force_confirmation(snap_compare, fresh: EmbeddedFleet, size: tuple[int, int]) -> None:
    assert snap_compare(app_for(fresh), terminal_size=size,
                        run_before=polled_then(cursor_to((H100, None)), press("p"), force_typed))


@pytest.mark.parametrize("size", SIZES)
def test_fleet_filter_matches_nothing(snap_compare, fresh: EmbeddedFleet, size: tuple[int, int]) -> None:
    assert snap_compare(app_for(fresh), terminal_size=size,
                        run_before=polled_then(press("slash", *"xyz")))

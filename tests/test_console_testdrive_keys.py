"""Second test drive, live screens: the footer at 80 columns, Enter on a node row, the force plan."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from textual.widgets import Button, Input, Static
from textual.widgets._footer import FooterKey

from gpufleet.console.screens.fleet import FleetScreen
from gpufleet.console.screens.purge import PurgeModal
from gpufleet.console.widgets.fleet_table import FleetTable
from gpufleet.console.widgets.format import fitted_gpu_name
from tests.test_console_live_fixtures import EmbeddedFleet, all_polled, console_app, wait_for

A100 = "dgx-a100-01"  # its GPU 0 holds llama3-70b-finetune, in use


@pytest.fixture(scope="module")
def fleet() -> Iterator[EmbeddedFleet]:
    started = EmbeddedFleet(2)
    yield started
    started.close()


def footer_keys(app: object) -> dict[str, FooterKey]:
    return {key.key: key for key in app.screen.query(FooterKey)}  # type: ignore[attr-defined]


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
async def test_footer_keeps_help_and_quit_on_screen(fleet: EmbeddedFleet, size: tuple[int, int]) -> None:
    app = console_app(fleet.targets, refresh_s=3600.0)
    async with app.run_test(size=size) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        await pilot.pause()
        keys = footer_keys(app)
        assert "f" not in keys  # the fleet's own key does nothing on the fleet: not shown
        # Hosts leaves the footer below 100 columns, the event log and reverse below 140 (help lists them).
        for key in ("question_mark", "q", "p", "c", "slash", "s", "v", "o") + (("h",) if size[0] >= 100 else ()):
            assert keys[key].region.right <= size[0], key  # whole, not pushed off the edge


async def test_enter_on_a_node_row_folds_and_unfolds_it(fleet: EmbeddedFleet) -> None:
    app = console_app(fleet.targets, refresh_s=3600.0)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        table = app.screen.query_one(FleetTable)
        assert table.move_to((A100, None))
        await pilot.press("enter")  # the ▾ keeps its promise: the node folds
        await pilot.pause()
        assert isinstance(app.screen, FleetScreen)
        assert not [r for r in table.rows if r.node.name == A100 and r.kind == "gpu"]
        assert table.current is not None and table.current.key == (A100, None) and table.current.collapsed
        assert "▸ dgx-a100-01" in table.render_line(1 + table.cursor).text
        await pilot.press("enter")
        await pilot.pause()
        assert len([r for r in table.rows if r.node.name == A100 and r.kind == "gpu"]) == 8
        assert "▾ dgx-a100-01" in table.render_line(1 + table.cursor).text


async def test_the_filter_box_footer_says_esc_clears(fleet: EmbeddedFleet) -> None:
    app = console_app(fleet.targets, refresh_s=3600.0)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        await pilot.press("slash", *"h100")
        await pilot.pause()
        assert isinstance(app.focused, Input)
        assert "escape" in footer_keys(app)
        await pilot.press("escape")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, FleetScreen) and screen.query_text == ""


async def test_force_plan_says_what_force_changes_and_enter_after_the_name(fleet: EmbeddedFleet) -> None:
    app = console_app(fleet.targets, refresh_s=3600.0)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        assert app.screen.query_one(FleetTable).move_to((A100, 0))
        await pilot.press("p")
        await wait_for(pilot, lambda: isinstance(app.screen, PurgeModal), "the purge modal")
        modal = app.screen
        assert isinstance(modal, PurgeModal)

        def plan() -> str:
            return str(modal.query_one("#purge-plan", Static).render())

        assert "llama3-70b-finetune" in plan() and "skipped unless forced" in plan()
        await pilot.click("#purge-force")
        await pilot.pause()
        assert "unloaded (force)" in plan() and "skipped unless forced" not in plan()
        go = modal.query_one("#purge-go", Button)
        await pilot.press(*"dgx-a100", "enter")  # not the whole name: nothing moves, it says why
        await pilot.pause()
        assert isinstance(app.focused, Input) and go.disabled
        assert any("exactly" in n.message for n in app._notifications)
        await pilot.press(*"-01", "enter")  # the name: Enter moves to Purge, it does not run it
        await pilot.pause()
        assert app.focused is go and not go.disabled
        assert modal.result is None and str(go.label) == "Purge"
        await pilot.click("#purge-force")  # force off again: the plan goes back
        await pilot.pause()
        assert "skipped unless forced" in plan()


def test_narrow_gpu_names_keep_the_model_and_its_memory() -> None:
    assert fitted_gpu_name("NVIDIA A100-SXM4-80GB", 9) == "A100 80GB"
    assert fitted_gpu_name("NVIDIA H100 80GB HBM3", 9) == "H100 80GB"
    assert fitted_gpu_name("NVIDIA H100 80GB HBM3", 17) == "H100 80GB HBM3"  # fits: unchanged
    assert fitted_gpu_name("NVIDIA L40S", 9) == "L40S"
    assert fitted_gpu_name("NVIDIA RTX 6000 Ada Generation", 9) == "RTX 6000 Ada Generation"  # caller cuts

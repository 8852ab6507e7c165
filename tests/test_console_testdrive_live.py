"""Test-drive defects on the live screens: purge at 80x24, the sort arrow, UUIDs, empty filters."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from textual.widgets import Button, Input, Label, Static, Switch

from gpufleet.console.screens.detail import GpuDetailScreen
from gpufleet.console.screens.purge import FORCE_OFF, FORCE_ON, PurgeModal
from gpufleet.console.widgets.fleet_table import FleetTable, header_cell, layout
from tests.test_console_live_fixtures import EmbeddedFleet, all_polled, console_app, wait_for

H100 = "dgx-h100-01"


@pytest.fixture(scope="module")
def fleet() -> Iterator[EmbeddedFleet]:
    started = EmbeddedFleet(3)
    yield started
    started.close()


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
async def test_force_confirmation_stays_whole_and_readable(fleet: EmbeddedFleet,
                                                           size: tuple[int, int]) -> None:
    app = console_app(fleet.targets, refresh_s=3600.0)
    async with app.run_test(size=size) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        assert app.screen.query_one(FleetTable).move_to((H100, None))  # the longest plan: every GPU
        await pilot.press("p")
        await wait_for(pilot, lambda: isinstance(app.screen, PurgeModal), "the purge modal")
        modal = app.screen
        assert isinstance(modal, PurgeModal)
        label = modal.query_one("#purge-force-label", Label)
        assert str(label.render()) == FORCE_OFF
        assert modal.query_one("#purge-force-row").border_title == "force"
        await pilot.click("#purge-force")
        await pilot.pause()
        assert modal.query_one("#purge-force", Switch).value
        assert str(label.render()) == FORCE_ON
        confirm = modal.query_one("#purge-confirm", Input)
        assert app.focused is confirm
        await pilot.pause()
        dialog = modal.query_one("#purge-dialog").region
        buttons = modal.query_one("#purge-buttons").region
        # the input keeps its three rows, inside the dialog, above the buttons, clear of the plan
        assert confirm.region.height == 3
        assert dialog.contains_region(confirm.region) and dialog.contains_region(buttons)
        assert confirm.region.bottom <= buttons.y
        assert modal.query_one("#purge-body").region.bottom <= modal.query_one("#purge-force-row").region.y
        assert dialog.bottom <= size[1]
        await pilot.press(*H100)
        await pilot.pause()
        assert not modal.query_one("#purge-go", Button).disabled


async def test_a_forced_purge_plan_is_whole_at_80x24(fleet: EmbeddedFleet) -> None:
    """GPU 7's model spans GPU 6: with force on, "also frees GPU 6" was below a scroll at 80x24."""
    app = console_app(fleet.targets, refresh_s=3600.0)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        assert app.screen.query_one(FleetTable).move_to((H100, 7))
        await pilot.press("p")
        await wait_for(pilot, lambda: isinstance(app.screen, PurgeModal), "the purge modal")
        modal = app.screen
        switch = modal.query_one("#purge-force", Switch)
        assert switch.region.height == 1  # one row on a short screen (three on a tall one)
        blurred = switch.rich_style.bgcolor
        await pilot.press("tab", "tab")  # Purge, then the switch: its focus must still show
        await pilot.pause()
        assert app.focused is switch and switch.rich_style.bgcolor != blurred
        await pilot.press("space")
        await pilot.pause()
        body = modal.query_one("#purge-body")
        plan = str(modal.query_one("#purge-plan", Static).render())
        assert "also frees GPU 6" in plan and "qwen-3.5-27b" in plan
        assert body.max_scroll_y == 0 and body.region.height >= len(plan.splitlines())
        for part in ("#purge-force", "#purge-confirm", "#purge-buttons"):
            assert modal.query_one("#purge-dialog").region.contains_region(modal.query_one(part).region), part


def test_the_sort_arrow_never_moves_a_title() -> None:
    for width in (120, 80):
        for column in layout(width):
            plain = header_cell(column, "node" if column.sort != "node" else "util", False)
            for reverse in (False, True):
                sorted_ = header_cell(column, column.sort or "node", reverse)
                assert len(sorted_) == len(plain) == column.width
                title = column.title.strip()
                assert plain.index(title) == sorted_.index(title), (width, column.title)
                if column.sort:
                    assert ("▼" if reverse else "▲") in sorted_


@pytest.mark.parametrize("flat", [False, True])
def test_the_sort_arrow_never_joins_two_titles(flat: bool) -> None:
    # At 80 columns "UTIL▼TEMP", "TEMP▼POWER" and "POWER▼PROCS" ran together.
    for width in (80, 99, 100, 120, 160, 200):
        columns = layout(width, flat=flat)
        for sort in (c.sort for c in columns if c.sort):
            for reverse in (False, True):
                cells = [header_cell(c, sort, reverse) for c in columns]
                for left, right in itertools.pairwise(cells):
                    assert left.endswith(" ") or right.startswith(" "), (width, sort, left, right)
                assert "…" not in "".join(cells), (width, sort)  # every title whole


@pytest.mark.parametrize("flat", [False, True])
def test_the_fleet_columns_fit_every_width_and_leave_team_model_room(flat: bool) -> None:
    # A flat table between 100 and 112 columns was wider than the screen: TEAM / MODEL cut off.
    for width in range(80, 240):
        columns = layout(width, flat=flat)
        assert sum(c.width for c in columns) == width, width
        holder = columns[-1]
        assert holder.name == "holder" and holder.width >= (24 if width >= 100 else 12), width


async def test_detail_shows_the_whole_uuid_at_80_columns(fleet: EmbeddedFleet) -> None:
    app = console_app(fleet.targets, refresh_s=3600.0)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        assert app.screen.query_one(FleetTable).move_to((H100, 6))
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, GpuDetailScreen), "the detail screen")
        uuid = app.fleet.nodes[H100].gpu(6).uuid  # type: ignore[union-attr]
        assert uuid and len(uuid) == 40
        line = app.screen.query_one("#detail-uuid", Static)
        assert str(line.render()) == f"UUID {uuid}"
        assert line.region.width >= len(f"UUID {uuid}")


async def test_a_filter_that_matches_nothing_says_so(fleet: EmbeddedFleet) -> None:
    app = console_app(fleet.targets, refresh_s=3600.0)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        screen = app.screen
        await pilot.press("slash", *"xyz")
        await pilot.pause()
        message = screen.query_one("#fleet-nomatch", Static)
        assert message.display and not screen.query_one(FleetTable).display
        assert str(message.render()) == "No GPUs match “xyz” (Esc clears the filter)"
        await pilot.press("enter")  # nothing to go to: the box keeps the keys
        assert app.focused is screen.query_one("#fleet-filter", Input)
        await pilot.press("escape")
        await pilot.pause()
        assert not message.display
        assert app.focused is screen.query_one(FleetTable)
        assert len(screen.query_one(FleetTable).rows) > 2

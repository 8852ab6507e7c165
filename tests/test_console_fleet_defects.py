"""Issue 13 §1: the fleet screen's defects, each driven by pilot against real simulated nodes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pytest
from rich.cells import cell_len
from rich.style import Style
from textual.widgets import Button, DataTable, Static

from gpufleet.console.app import GpuFleetApp
from gpufleet.console.screens.detail import GpuDetailScreen
from gpufleet.console.screens.help import HelpScreen
from gpufleet.console.screens.purge import PurgeModal
from gpufleet.console.widgets.fleet_table import FleetTable
from gpufleet.server.config import ConsoleSettings
from tests.test_console_live_fixtures import (
    FROZEN,
    Clock,
    EmbeddedFleet,
    all_polled,
    console_app,
    wait_for,
)

H100 = "dgx-h100-01"
HOUR = 3600.0


@pytest.fixture(scope="module")
def fleet() -> Iterator[EmbeddedFleet]:
    started = EmbeddedFleet(4)  # the demo's four nodes: 22 GPUs, more rows than 80x24 shows
    yield started
    started.close()


def answered_at(app: GpuFleetApp, when: datetime) -> bool:
    """Every node's latest answer was read at ``when`` (its own clock) and is on screen."""
    return (all(n.status is not None and n.status.timestamp == when for n in app.fleet.nodes.values())
            and app.screen._drawn_version == app.fleet.version)  # type: ignore[attr-defined]


def table_of(app: GpuFleetApp) -> FleetTable:
    return app.screen.query_one(FleetTable)


def line_styles(table: FleetTable, row_index: int) -> list[Style]:
    """The styles of the segments the table draws for a row (header is line 0)."""
    strip = table.render_line(1 + row_index - table.scroll_offset.y)
    return [seg.style for seg in strip if seg.text]  # type: ignore[misc]


@pytest.mark.parametrize("size", [(80, 24), (200, 24)])
async def test_the_last_row_is_on_screen_when_end_selects_it(fleet: EmbeddedFleet, size: tuple[int, int]) -> None:
    app = console_app(fleet.targets, refresh_s=HOUR)
    async with app.run_test(size=size) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        table = table_of(app)
        assert table.max_scroll_y > 0  # the list needs its vertical scrollbar
        await pilot.press("end")
        await pilot.pause()
        assert not table.show_horizontal_scrollbar  # no phantom column, no bar over the last row
        last = table.rows[-1]
        assert table.current is last and last.key == ("ws-gpu-01", 1)
        # The cursor's line is inside what the table shows, and it is the last row drawn.
        screen_line = 1 + table.cursor - table.scroll_offset.y
        assert screen_line == table.scrollable_content_region.height - 1
        assert "L40S" in table.render_line(screen_line).text
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, GpuDetailScreen), "the detail screen")
        assert (app.screen.node_name, app.screen.gpu_index) == ("ws-gpu-01", 1)  # type: ignore[attr-defined]


async def test_the_cursor_lights_every_cell_of_its_row_from_the_start(fleet: EmbeddedFleet) -> None:
    app = console_app(fleet.targets, refresh_s=HOUR)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        table = table_of(app)
        assert app.focused is table and table.cursor == 0  # selected at start-up, no key pressed
        cursor_bg = table.get_component_rich_style("line-table--cursor").bgcolor
        badge_bg = table.get_component_rich_style("line-table--badge").bgcolor
        plain_bg = table.get_component_rich_style("line-table--cell").bgcolor
        assert cursor_bg is not None and cursor_bg != plain_bg

        def lit(row: int) -> None:
            styles = line_styles(table, row)
            # Every cell (index, name, bars, figures, holder) but the SIM badge wears the cursor.
            assert all(s.bgcolor == cursor_bg for s in styles if s.bgcolor != badge_bg), row
            assert sum(s.bgcolor == cursor_bg for s in styles) >= len(styles) - 1

        lit(0)  # the node row: `p` here purges the whole node, so it must be plain to see
        await pilot.press("down")
        await pilot.pause()
        lit(1)  # a GPU row, index and memory bar included
        assert all(s.bgcolor != cursor_bg for s in line_styles(table, 2))  # the next row is not lit


@pytest.mark.parametrize("theme", ["textual-light", "textual-dark"])
async def test_every_cell_takes_its_colours_from_the_theme(fleet: EmbeddedFleet, theme: str) -> None:
    settings = ConsoleSettings(refresh_s=HOUR, request_timeout_s=2.0, theme=theme)
    app = GpuFleetApp(settings, fleet.targets, clock=Clock(), refresh_s=HOUR, mask_rtt=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        table = table_of(app)
        table.blur()  # the cursor aside, every row is drawn on the table's own background
        await pilot.pause()
        surface = table.get_component_rich_style("line-table--cell").bgcolor
        badge = table.get_component_rich_style("line-table--badge").bgcolor
        assert surface is not None and surface.triplet is not None
        # The theme's surface, not the terminal's default: dark themes dark, light themes light.
        brightness = sum(surface.triplet) / 3
        assert (brightness > 128) == (theme == "textual-light")
        for y in range(1, table.scrollable_content_region.height):
            for seg in table.render_line(y):
                style = seg.style
                assert style is not None and style.color is not None and style.bgcolor is not None, (y, seg)
                if y - 1 + table.scroll_offset.y != table.cursor:
                    assert style.bgcolor in (surface, badge), (y, seg)


async def test_the_filter_count_stays_whole_at_80_columns(fleet: EmbeddedFleet) -> None:
    app = console_app(fleet.targets, refresh_s=HOUR)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        await pilot.press("slash", *"h100")
        await pilot.pause()
        matched = sum(1 for r in table_of(app).rows if r.kind == "gpu")
        assert matched == 9
        status = app.screen.query_one("#fleet-status", Static)
        text = str(status.render())
        assert "9/22" in text or "9 of 22" in text
        assert cell_len(text) <= status.region.width  # nothing cut off at the edge
        # The longest status: the process view's count. It stops short of the SIMULATED badge
        # (it ran into it: "1 of 23 processes SIMULATED").
        pid = app.fleet.nodes["inf-l40s-01"].status.processes[0].pid  # type: ignore[union-attr]
        await pilot.press("escape", "o", "slash", *str(pid), "enter")
        await pilot.pause()
        text = str(status.render())
        assert text.endswith("processes") and cell_len(text) <= status.region.width - 2, text


async def test_a_wrong_token_says_auth_failed_not_unreachable(fleet: EmbeddedFleet) -> None:
    wrong = [t if t.name != H100 else type(t)(t.name, t.url, None) for t in fleet.targets]
    app = console_app(wrong, refresh_s=HOUR)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.fleet.nodes[H100].reachable is False
                       and app.fleet.nodes[H100].health == "auth", "the refused token")
        await pilot.pause()
        table = table_of(app)
        row = next(i for i, r in enumerate(table.rows) if r.key == (H100, None))
        text = table.render_line(1 + row - table.scroll_offset.y).text
        assert "auth failed: 401" in text and "unreachable" not in text
        assert row == 0  # trouble first
        assert any("auth failed: 401" in n.message for n in app._notifications)


async def test_readonly_purge_key_says_purge_is_disabled_and_help_omits_it(fleet: EmbeddedFleet) -> None:
    app = console_app(fleet.targets, refresh_s=HOUR, readonly=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        assert table_of(app).move_to((H100, 6))
        await pilot.press("p")
        await pilot.pause()
        assert not isinstance(app.screen, PurgeModal)
        assert any("Purge is disabled" in n.message and "read-only" in n.message for n in app._notifications)
        assert "read-only" in str(app.screen.query_one("#fleet-status", Static).render())
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), "help")
        table = app.screen.query_one("#help-table", DataTable)
        rows = [[str(c) for c in table.get_row_at(r)] for r in range(table.row_count)]
        ids = {row[3] for row in rows}
        assert not ids & {"fleet.purge", "detail.purge", "purge.cancel"}
        # The only line about purge says it is disabled.
        assert [row[2] for row in rows if "purge" in row[2].lower()] == ["Purge is disabled (read-only)"]
        assert "purge and signals are disabled" in str(app.screen.query_one("#help-hint", Static).render()).lower()


async def test_readwrite_help_lists_purge_and_not_the_readonly_notice(fleet: EmbeddedFleet) -> None:
    app = console_app(fleet.targets, refresh_s=HOUR)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), "help")
        table = app.screen.query_one("#help-table", DataTable)
        ids = [str(table.get_row_at(r)[3]) for r in range(table.row_count)]
        assert "fleet.purge" in ids and "app.purge_disabled" not in ids


async def test_purge_dialog_tab_order_has_no_invisible_stop(fleet: EmbeddedFleet) -> None:
    app = console_app(fleet.targets, refresh_s=HOUR)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        assert table_of(app).move_to((H100, 6))
        await pilot.press("p")
        await wait_for(pilot, lambda: isinstance(app.screen, PurgeModal), "the purge modal")
        modal = app.screen
        await pilot.pause()
        assert app.focused is modal.query_one("#purge-cancel", Button)
        seen = []
        for _ in range(3):
            await pilot.press("tab")
            await pilot.pause()
            seen.append(app.focused.id if app.focused else None)
        assert seen == ["purge-go", "purge-force", "purge-cancel"]


async def test_a_live_resort_keeps_the_view_and_the_cursor_place() -> None:
    clock = Clock()
    moving = EmbeddedFleet(3, clock=clock)  # the nodes' readings move with the console's clock
    try:
        app = console_app(moving.targets, refresh_s=HOUR, clock=clock)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
            await pilot.press("s", "s", "s")  # memory, util, temperature (hottest first)
            await pilot.pause()
            table = table_of(app)
            assert app.screen.sort == "temp"  # type: ignore[attr-defined]
            await pilot.press(*["down"] * 3)
            await pilot.pause()
            before_key, before_top = table.current.key, table.scroll_offset.y  # type: ignore[union-attr]
            # Later in the day the load moves: the GPU under the cursor changes rank.
            clock.now = FROZEN.replace(hour=3)
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: answered_at(app, clock.now), "the second answers")
            await pilot.pause()
            assert next(i for i, r in enumerate(table.rows) if r.key == before_key) != 3  # it moved
            assert table.cursor == 3 and table.scroll_offset.y == before_top  # the view did not
            # Following the selection is an option (htop's F): then the cursor goes with its GPU.
            await pilot.press("F")
            clock.now = FROZEN
            followed = table.current.key  # type: ignore[union-attr]
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: answered_at(app, FROZEN), "the third answers")
            await pilot.pause()
            assert table.current.key == followed  # type: ignore[union-attr]
    finally:
        moving.close()


async def test_letters_typed_right_after_slash_go_to_the_filter(fleet: EmbeddedFleet) -> None:
    from textual import events

    app = console_app(fleet.targets, refresh_s=HOUR)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        # All at once, as a terminal delivers a fast typist's or a paste's bytes: `o` and `v`
        # inside the word must not switch views.
        for key, char in (("slash", "/"), ("d", "d"), ("o", "o"), ("w", "w"), ("n", "n")):
            event = events.Key(key, char)
            event.set_sender(app)
            app._driver.send_message(event)  # type: ignore[union-attr]  # as the terminal driver does
        await pilot.pause()
        await pilot.pause()
        screen = app.screen
        assert screen.view == "grouped"  # type: ignore[attr-defined]
        box = screen.query_one("#fleet-filter")
        assert (box.value, app.focused) == ("down", box) and screen.query_text == "down"  # type: ignore[attr-defined]

"""The GPU detail screen driven by pilot against a real simulated node on 127.0.0.1:0."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from rich.text import Text
from textual.app import App, ComposeResult
from textual.widgets import DataTable, Static

from gpufleet.console.app import GpuFleetApp
from gpufleet.console.screens.detail import GpuDetailScreen
from gpufleet.console.widgets.fleet_table import FleetTable
from gpufleet.console.widgets.footer import ConsoleFooter
from gpufleet.console.widgets.gpu_process_table import GpuProcessTable
from gpufleet.console.widgets.history_graph import HistoryGraph
from gpufleet.server.schemas import GpuProcess
from tests.test_console_live_fixtures import (
    Clock,
    LiveNode,
    all_polled,
    console_app,
    start_nodes,
    wait_for,
)

NODE = "ws-gpu-01"  # GPU 1: an ollama runner and a process from another container


@pytest.fixture
async def node() -> AsyncIterator[LiveNode]:
    (started,) = await start_nodes(1)
    yield started
    await started.stop()


async def open_detail(pilot, app: GpuFleetApp, gpu: int) -> GpuDetailScreen:  # type: ignore[no-untyped-def]
    await wait_for(pilot, lambda: all_polled(app), "the first answer")
    assert app.screen.query_one(FleetTable).move_to((NODE, gpu))
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, GpuDetailScreen), "the detail screen")
    await pilot.pause()
    return app.screen  # type: ignore[return-value]


async def test_at_80x24_gpu_mem_and_room_for_processes_are_on_screen(node: LiveNode) -> None:
    app = console_app([node.target])
    async with app.run_test(size=(80, 24)) as pilot:
        detail = await open_detail(pilot, app, 1)
        table = detail.query_one("#detail-processes", DataTable)
        footer = detail.query_one(ConsoleFooter)
        # The whole table sits on screen above the footer, with room for six processes or more.
        assert table.region.y >= 0 and table.region.bottom <= footer.region.y
        assert table.region.height - 1 >= 6
        assert table.row_count == 2 and table.row_count <= table.region.height - 1
        # Every column up to and including GPU MEM ends inside the table: no horizontal scroll.
        right = 0
        for column in table.ordered_columns:
            right += column.get_render_width(table)
            if column.label.plain.strip() == "GPU MEM":
                break
        else:
            raise AssertionError("no GPU MEM column")
        assert right <= table.scrollable_content_region.width
        assert table.max_scroll_x == 0


async def test_stale_readings_say_their_age_not_now(node: LiveNode) -> None:
    clock = Clock()
    app = console_app([node.target], clock=clock, refresh_s=3600)
    async with app.run_test(size=(120, 40)) as pilot:
        detail = await open_detail(pilot, app, 0)
        graphs = list(detail.query(HistoryGraph))
        assert len(graphs) == 4 and all(" now · peak " in g.caption() for g in graphs)
        await node.stop()
        clock.advance(minutes=3)
        await pilot.press("ctrl+r")
        state = app.fleet.nodes[NODE]
        await wait_for(pilot, lambda: state.reachable is False
                       and detail._drawn_version == app.fleet.version, "the node to be marked down")
        await pilot.pause()
        for graph in graphs:
            assert "3m ago" in graph.caption() and "now" not in graph.caption(), graph.caption()
        heading = str(detail.query_one("#detail-history-title", Static).render())
        assert "last 15 min" in heading and "last reading 3m ago" in heading
        assert "as of 3m ago" in str(detail.query_one("#detail-facts", Static).render())


async def test_cursor_stays_on_its_process_across_polls(node: LiveNode) -> None:
    app = console_app([node.target], refresh_s=3600)
    async with app.run_test(size=(80, 24)) as pilot:
        detail = await open_detail(pilot, app, 1)
        table = detail.query_one(GpuProcessTable)
        assert table.current is not None and table.current.visible  # biggest first: the runner
        await pilot.press("down")
        chosen = table.current
        assert chosen is not None and not chosen.visible
        history = app.fleet.nodes[NODE].histories[1]
        for _ in range(2):
            before = len(history)
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: len(history) > before  # noqa: B023
                           and detail._drawn_version == app.fleet.version, "the next poll")
            await pilot.pause()
            assert table.current is not None and table.current.pid == chosen.pid


class TableApp(App[None]):
    def compose(self) -> ComposeResult:
        yield GpuProcessTable(id="t")


async def test_a_command_line_is_shown_as_written_never_as_markup() -> None:
    command = "python train.py --tags [bold]x[/bold] [/] [link=http://x]y"
    proc = GpuProcess(pid=42, name="python", memory_mb=2048, gpu_index=0, user="alice",
                      command=command, type="compute")
    app = TableApp()
    async with app.run_test(size=(200, 10)) as pilot:
        table = app.query_one(GpuProcessTable)
        table.show([proc])
        await pilot.pause()
        cells = table.get_row("42")
        assert all(isinstance(c, Text) for c in cells)
        assert cells[-1].plain.strip() == command and not cells[-1].spans

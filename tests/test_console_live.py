"""The live console driven by pilot against real simulated nodes on 127.0.0.1:0."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from textual.widgets import Button, Input, Static, Switch

from gpufleet.console.app import GpuFleetApp
from gpufleet.console.screens.detail import GpuDetailScreen
from gpufleet.console.screens.fleet import FleetScreen
from gpufleet.console.screens.purge import PurgeModal
from gpufleet.console.widgets.fleet_table import FleetTable
from tests.test_console_live_fixtures import (
    TOKEN,
    LiveNode,
    all_polled,
    console_app,
    start_nodes,
    wait_for,
)

H100 = "dgx-h100-01"


@pytest.fixture
async def nodes() -> AsyncIterator[list[LiveNode]]:
    started = await start_nodes(3)
    yield started
    for node in started:
        await node.stop()


def table(app: GpuFleetApp) -> FleetTable:
    return app.screen.query_one(FleetTable)


async def open_purge_on(pilot, app: GpuFleetApp, key: tuple[str, int | None]) -> PurgeModal:  # type: ignore[no-untyped-def]
    assert table(app).move_to(key)
    await pilot.press("p")
    await wait_for(pilot, lambda: isinstance(app.screen, PurgeModal), "the purge modal")
    return app.screen  # type: ignore[return-value]


async def test_fleet_to_detail_to_purge_cancelled(nodes: list[LiveNode]) -> None:
    app = console_app([n.target for n in nodes])
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        rows = table(app).rows
        assert [r.node.name for r in rows if r.kind == "node"] == ["dgx-a100-01", H100, "ws-gpu-01"]
        assert sum(r.kind == "gpu" for r in rows) == 18
        assert app.screen.query_one("#fleet-simulated").has_class("-on")

        await pilot.press("down", "down", "enter")  # node row, GPU 0, GPU 1
        await wait_for(pilot, lambda: isinstance(app.screen, GpuDetailScreen), "the detail screen")
        detail = app.screen
        assert (detail.node_name, detail.gpu_index) == ("dgx-a100-01", 1)
        facts = str(detail.query_one("#detail-facts", Static).render())
        assert "P-state" in facts and "MHz" in facts
        processes = detail.query_one("#detail-processes")
        assert processes.row_count >= 1  # type: ignore[attr-defined]

        await pilot.press("p")
        await wait_for(pilot, lambda: isinstance(app.screen, PurgeModal), "the purge modal")
        modal = app.screen
        assert modal.gpu_indices == [1]
        assert modal.focused is modal.query_one("#purge-cancel", Button)  # Cancel is the default
        plan = str(modal.query_one("#purge-plan", Static).render())
        assert "dgx-a100-01" in plan and "llama3-70b-finetune" in plan and "in use" in plan
        await pilot.press("enter")  # the focused Cancel
        await wait_for(pilot, lambda: isinstance(app.screen, GpuDetailScreen), "back on detail")
        assert modal.result is None and modal.error is None
        # Nothing was unloaded: the model is still on the node.
        assert "llama3-70b-finetune" in {m.name for m in nodes[1].backend.loaded_models()}
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, FleetScreen), "back on the fleet")


async def test_purge_without_force_skips_model_in_use(nodes: list[LiveNode]) -> None:
    app = console_app([n.target for n in nodes])
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        modal = await open_purge_on(pilot, app, (H100, None))
        assert modal.gpu_indices is None  # a node row purges every GPU of the node
        plan = str(modal.query_one("#purge-plan", Static).render())
        assert "qwen-3.5-27b" in plan and "in use: skipped unless forced" in plan
        assert "llama3-8b-sft" in plan and "idle: unloaded" in plan
        await pilot.click("#purge-go")
        await wait_for(pilot, lambda: modal.result is not None or modal.error is not None, "the purge")
        assert modal.error is None
        result = modal.result
        assert result is not None
        assert result.models_unloaded == ["llama3-8b-sft"]
        assert any("qwen-3.5-27b" in s for s in result.skipped)
        shown = str(modal.query_one("#purge-result", Static).render())
        assert "llama3-8b-sft" in shown and "Skipped" in shown and "Recommendation" in shown
        # The server lists the skip in errors too; the result shows it once, as a skip.
        assert result.skipped and all(shown.count(skip) == 1 for skip in result.skipped)
        loaded = {m.name for m in nodes[2].backend.loaded_models()}
        assert loaded == {"qwen-3.5-27b"}
        await pilot.press("enter")  # Close
        await wait_for(pilot, lambda: isinstance(app.screen, FleetScreen), "back on the fleet")


async def test_force_purge_needs_the_typed_node_name(nodes: list[LiveNode]) -> None:
    app = console_app([n.target for n in nodes])
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        modal = await open_purge_on(pilot, app, (H100, 6))
        go = modal.query_one("#purge-go", Button)
        await pilot.click("#purge-force")
        assert modal.query_one("#purge-force", Switch).value is True
        assert go.disabled  # force without the name: refused
        confirm = modal.query_one("#purge-confirm", Input)
        assert confirm.has_focus
        await pilot.press(*"dgx-h100-0")
        assert go.disabled
        await pilot.press("1")
        assert not go.disabled
        await pilot.click("#purge-go")
        await wait_for(pilot, lambda: modal.result is not None or modal.error is not None, "the purge")
        assert modal.result is not None, modal.error
        assert modal.result.models_unloaded == ["qwen-3.5-27b"]
        assert "qwen-3.5-27b" not in {m.name for m in nodes[2].backend.loaded_models()}


async def test_purge_failure_is_shown(nodes: list[LiveNode]) -> None:
    targets = [n.target for n in nodes]
    app = console_app(targets)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        modal = await open_purge_on(pilot, app, (H100, None))
        await nodes[2].stop()  # the node dies between the confirmation and the click
        await pilot.click("#purge-go")
        await wait_for(pilot, lambda: modal.error is not None, "the purge to fail")
        shown = str(modal.query_one("#purge-result", Static).render())
        assert "Purge failed" in shown and "connection failed" in shown
        assert TOKEN not in shown


async def test_readonly_hides_purge(nodes: list[LiveNode]) -> None:
    app = console_app([n.target for n in nodes], readonly=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        assert table(app).move_to((H100, 6))
        await pilot.press("p")
        await pilot.pause()
        assert isinstance(app.screen, FleetScreen)
        assert "purge" not in {b.binding.action for b in app.active_bindings.values()}
        assert "Purge" not in {c.title for c in app.get_system_commands(app.screen)}
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, GpuDetailScreen), "the detail screen")
        await pilot.press("p")
        await pilot.pause()
        assert isinstance(app.screen, GpuDetailScreen)


async def test_node_goes_down_and_comes_back(nodes: list[LiveNode]) -> None:
    app = console_app([n.target for n in nodes])
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        h100 = app.fleet.nodes[H100]
        seen_at = h100.last_ok_at
        down = next(n for n in nodes if n.name == H100)
        await down.stop()
        # A poll in flight when the node stops is still answered (a graceful stop), and its
        # answer is timed when it arrives: move the clock only once the failure is in, or
        # that answer is "seen" 3 minutes later. A node's polls never overlap, so none follows.
        await wait_for(pilot, lambda: h100.reachable is False, "the node to be marked unreachable")
        app.clock.advance(minutes=3)  # type: ignore[attr-defined]
        assert h100.last_ok_at == seen_at and h100.last_error == "connection failed"
        # The other nodes keep answering while one is down.
        polls_before = len(app.fleet.nodes["ws-gpu-01"].histories[0])
        await wait_for(pilot, lambda: len(app.fleet.nodes["ws-gpu-01"].histories[0]) > polls_before,
                       "another node's next answer")
        await wait_for(pilot, lambda: app.screen._drawn_version == app.fleet.version, "a redraw")  # type: ignore[attr-defined]
        node_row = next(r for r in table(app).rows if r.key == (H100, None))
        line = "".join(s.text for s in table(app)._node_line(node_row, 120))
        assert "unreachable" in line and "last seen 3m ago" in line
        # Its GPUs stay listed with the last readings.
        assert sum(1 for r in table(app).rows if r.node.name == H100 and r.kind == "gpu") == 8

        await down.start()  # same port
        await wait_for(pilot, lambda: h100.reachable is True, "the node to come back")
        assert h100.last_error is None


async def test_filter_and_sort(nodes: list[LiveNode]) -> None:
    app = console_app([n.target for n in nodes])
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        await pilot.press("slash", *"qwen")
        await wait_for(pilot, lambda: app.screen.query_text == "qwen", "the filter")  # type: ignore[attr-defined]
        rows = table(app).rows
        gpus = [(r.node.name, r.gpu.index) for r in rows if r.gpu is not None]
        assert gpus == [(H100, 6), (H100, 7), ("ws-gpu-01", 0)]
        await pilot.press("enter")  # keep the filter, back to the table
        assert table(app).has_focus
        await pilot.press("escape")
        assert app.screen.query_text == ""  # type: ignore[attr-defined]

        await pilot.press("slash", *"dgx-a100")
        await wait_for(pilot, lambda: len(table(app).rows) == 9, "a node-name filter")
        await pilot.press("escape")

        await pilot.press("s")  # node -> memory, biggest first
        screen = app.screen
        assert (screen.sort, screen.reverse) == ("memory", True)  # type: ignore[attr-defined]
        await pilot.press("s")  # -> util
        rows = table(app).rows
        first_node = rows[0].node
        util = [r.gpu.utilization.gpu_percent for r in rows if r.gpu and r.node is first_node]
        assert util == sorted(util, reverse=True)
        await pilot.press("r")
        rows = table(app).rows
        util = [r.gpu.utilization.gpu_percent for r in rows if r.gpu and r.node is rows[0].node]
        assert util == sorted(util)


async def test_writable_console_offers_purge(nodes: list[LiveNode]) -> None:
    app = console_app([nodes[0].target])
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "the first answer")
        assert "purge" in {b.binding.action for b in app.active_bindings.values()}
        assert "Purge" in {c.title for c in app.get_system_commands(app.screen)}


async def test_theme_toggle_keymap_and_quit(nodes: list[LiveNode]) -> None:
    from gpufleet.server.config import ConsoleSettings

    settings = ConsoleSettings(refresh_s=0.5, keybindings={"fleet.sort": "o"})
    app = GpuFleetApp(settings, [nodes[0].target], mask_rtt=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "the first answer")
        dark = app.theme
        await pilot.press("t")
        assert app.theme == "textual-light"
        await pilot.press("t")
        assert app.theme == dark
        await pilot.press("o")  # remapped from s
        assert app.screen.sort == "memory"  # type: ignore[attr-defined]
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running, "the app to quit")
    assert not app._clients  # every client closed on the way out

"""Issue 13 §3: the fleet in other shapes (flat, processes, wide columns) and its keys, palette, help and footer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from rich.cells import cell_len
from textual.binding import Binding
from textual.widgets import DataTable
from textual.widgets._footer import FooterKey

from gpufleet.console.app import GpuFleetApp
from gpufleet.console.screens.detail import GpuDetailScreen
from gpufleet.console.screens.events import EventLogScreen, EventTable
from gpufleet.console.screens.fleet import FleetScreen
from gpufleet.console.screens.help import HelpScreen
from gpufleet.console.screens.purge import PurgeModal
from gpufleet.console.widgets.fleet_table import FleetTable
from gpufleet.console.widgets.format import workloads_text
from gpufleet.console.widgets.line_table import LineTable, fit_middle
from gpufleet.console.widgets.process_table import ProcessTable
from gpufleet.server.config import ConsoleSettings
from tests.test_console_live_fixtures import Clock, EmbeddedFleet, all_polled, console_app, wait_for

HOUR = 3600.0


@pytest.fixture(scope="module")
def fleet() -> Iterator[EmbeddedFleet]:
    started = EmbeddedFleet(4)
    yield started
    started.close()


def screen_of(app: GpuFleetApp) -> FleetScreen:
    assert isinstance(app.screen, FleetScreen)
    return app.screen


async def test_flat_view_lists_every_gpu_sorted_across_the_fleet(fleet: EmbeddedFleet) -> None:
    app = console_app(fleet.targets, refresh_s=HOUR)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        await pilot.press("v")
        await pilot.pause()
        screen = screen_of(app)
        table = screen.query_one(FleetTable)
        assert screen.view == "flat" and all(r.kind == "gpu" for r in table.rows) and len(table.rows) == 22
        assert "flat" in str(screen.query_one("#fleet-status").render())
        await pilot.press("s", "s", "s")  # memory, util, temperature: hottest first
        await pilot.pause()
        temps = [r.gpu.temperature_c for r in table.rows]  # type: ignore[union-attr]
        assert screen.sort == "temp" and temps == sorted(temps, reverse=True)  # type: ignore[type-var]
        assert {r.node.name for r in table.rows[:5]} != {table.rows[0].node.name}  # nodes mixed together
        assert table.render_line(0).text.startswith("NODE")
        assert table.rows[0].node.name in table.render_line(1).text
        await pilot.press("home")
        hottest = table.current.key  # type: ignore[union-attr]
        await pilot.press("v")  # back to grouped, on the same GPU
        await pilot.pause()
        assert screen.view == "grouped" and table.current is not None and table.current.key == hottest


async def test_process_view_lists_every_process_and_enter_opens_its_gpu(fleet: EmbeddedFleet) -> None:
    app = console_app(fleet.targets, refresh_s=HOUR)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        await pilot.press("o")
        await pilot.pause()
        screen = screen_of(app)
        procs = screen.query_one(ProcessTable)
        assert screen.view == "processes" and procs.display and not screen.query_one(FleetTable).display
        everything = [(n.name, p.pid, p.gpu_index) for n in app.fleet.nodes.values()
                      for p in n.status.processes]  # type: ignore[union-attr]
        assert sorted((r.node.name, r.proc.pid, r.proc.gpu_index) for r in procs.rows) == sorted(everything)
        memory = [r.proc.memory_mb or 0 for r in procs.rows]
        assert memory == sorted(memory, reverse=True)  # biggest GPU memory first
        header = procs.render_line(0).text
        for title in ("NODE", "GPU", "PID", "USER", "GPU MEM", "CPU%", "HOST MEM", "TIME", "COMMAND"):
            assert title in header
        row = procs.rows[2]
        await pilot.press("down", "down", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, GpuDetailScreen), "the GPU detail")
        detail = app.screen
        assert (detail.node_name, detail.gpu_index) == (row.node.name, row.proc.gpu_index)  # type: ignore[attr-defined]
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, FleetScreen), "back")
        assert screen.view == "processes" and procs.current is not None and procs.current.key == row.key
        await pilot.press("p")  # purge from a process row: its GPU
        await wait_for(pilot, lambda: isinstance(app.screen, PurgeModal), "the purge modal")
        modal = app.screen
        assert modal.node.name == row.node.name and modal.gpu_indices == [row.proc.gpu_index]  # type: ignore[attr-defined]
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, FleetScreen), "back")
        await pilot.press("slash", *str(row.proc.pid), "enter")
        await pilot.pause()
        assert {r.proc.pid for r in procs.rows} == {row.proc.pid}
        await pilot.press("escape", "o")
        await pilot.pause()
        assert screen.view == "grouped"


def test_a_shared_gpus_workloads_fit_any_width_and_always_say_shared() -> None:
    both = ("data-science / bge-embed", "inference / llama3.2-3b")
    assert workloads_text(both, 60) == "data-science / bge-embed + inference / llama3.2-3b"
    assert workloads_text(both, 40) == "data-science / bge-embed +1"
    assert workloads_text(both, 17) == "data-science… +1"  # the first cut, the count kept whole
    assert workloads_text(both[:1], 10) == "data-science / bge-embed"  # one workload: the caller cuts
    assert workloads_text((), 10) == "—"


async def test_a_shared_gpu_shows_every_workload_grouped_flat_and_in_the_detail(fleet: EmbeddedFleet) -> None:
    """inf-l40s-01's GPU 3 serves data-science's bge-embed and inference's llama3.2-3b (issue 16)."""
    shared = ("inf-l40s-01", 3)
    app = console_app(fleet.targets, refresh_s=HOUR)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        table = screen_of(app).query_one(FleetTable)

        def line_of(key: tuple[str, int]) -> str:
            index = next(i for i, r in enumerate(table.rows) if r.key == key)
            table.scroll_to(y=index, animate=False, immediate=True)
            return table.render_line(1 + index - table.scroll_offset.y).text

        row = next(r for r in table.rows if r.key == shared)
        assert (row.holder, row.shared) == ("data-science / bge-embed", ("inference / llama3.2-3b",))
        assert line_of(shared).rstrip().endswith("data-science / bge-embed +1")  # grouped, 120 columns
        assert line_of(("inf-l40s-01", 2)).rstrip().endswith("data-science / bge-embed")  # not shared
        await pilot.press("slash", *"llama3.2", "enter")  # the second workload finds the GPU too
        await pilot.pause()
        assert [r.key for r in table.rows if r.kind == "gpu"] == [shared]
        await pilot.press("escape", "v")
        await pilot.resize_terminal(200, 40)
        await pilot.pause()
        assert line_of(shared).rstrip().endswith("data-science / bge-embed + inference / llama3.2-3b")  # flat
        table.move_to(shared)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, GpuDetailScreen), "the detail")
        await pilot.pause()
        title = app.screen.query_one("#detail-title")
        assert str(title.render()).endswith("· data-science / bge-embed + inference / llama3.2-3b")
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        text = str(title.render())
        assert text.endswith("· data-science / bge-embed +1") and cell_len(text) <= title.content_region.width


def test_a_name_too_long_for_its_column_is_cut_in_the_middle() -> None:
    assert fit_middle("sim-node-022", 11) == "sim-n…e-022"
    assert fit_middle("dgx-a100-01/5", 11) == "dgx-a…-01/5"
    assert fit_middle("ws-gpu-01", 11) == "ws-gpu-01  "


async def test_narrow_node_columns_keep_the_end_of_node_names() -> None:
    """At 80 columns the flat and process views cut node names at the end: every sim-node-0… alike."""
    six = EmbeddedFleet(6)  # the demo's five nodes and sim-node-001, too long for the column
    try:
        app = console_app(six.targets, refresh_s=HOUR)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
            await pilot.press("v")
            await pilot.pause()
            table = screen_of(app).query_one(FleetTable)
            assert table.move_to(("sim-node-001", 0))
            await pilot.pause()
            line = table.render_line(1 + table.cursor - table.scroll_offset.y).text
            assert line.startswith("sim-n…e-001 ")
            await pilot.press("o", "slash", *"sim-node", "enter")
            await pilot.pause()
            procs = screen_of(app).query_one(ProcessTable)
            assert procs.rows and all(procs.render_line(1 + i).text.startswith("sim-n…e-001 ")
                                      for i in range(len(procs.rows)))
    finally:
        six.close()


async def test_wide_terminals_get_fan_clock_pstate_and_energy(fleet: EmbeddedFleet) -> None:
    app = console_app(fleet.targets, refresh_s=HOUR)
    async with app.run_test(size=(160, 30)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        for width, wide in ((160, True), (159, False)):
            await pilot.resize_terminal(width, 30)
            await pilot.pause()
            table = screen_of(app).query_one(FleetTable)
            header = table.render_line(0).text
            assert all((title in header) == wide for title in ("FAN", "SM MHz", "PST", "ENERGY")), width
            row = next(i for i, r in enumerate(table.rows) if r.key == ("dgx-h100-01", 6))
            table.scroll_to(y=row, animate=False, immediate=True)
            line = table.render_line(1 + row - table.scroll_offset.y).text
            gpu = table.rows[row].gpu
            assert gpu is not None and (f" {gpu.sm_clock_mhz} " in line) == wide and ("P0" in line) == wide
            await pilot.press("home", *["s"] * 7)  # past the holder column: the wide columns when shown
            await pilot.pause()
            assert (screen_of(app).sort == "fan") == wide
            await pilot.press(*(["s"] * 4 if wide else []))  # round to the node column again (7 columns wrap)
            await pilot.pause()
            assert screen_of(app).sort == "node"


async def test_views_and_folds_are_remappable_and_in_the_palette(fleet: EmbeddedFleet) -> None:
    settings = ConsoleSettings(refresh_s=HOUR, request_timeout_s=2.0,
                               keybindings={"fleet.view": "g", "fleet.processes": "x", "app.events": "E"})
    app = GpuFleetApp(settings, fleet.targets, clock=Clock(), refresh_s=HOUR, mask_rtt=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        screen = screen_of(app)
        await pilot.press("v")
        await pilot.pause()
        assert screen.view == "grouped"  # the old key no longer does it
        await pilot.press("g")
        await pilot.pause()
        assert screen.view == "flat"
        await pilot.press("x")
        await pilot.pause()
        assert screen.view == "processes"
        titles = {c.title for c in app.get_system_commands(screen)}
        assert {"Grouped / flat view", "Processes view", "Event log", "Fold / unfold node",
                "Fold / unfold all nodes", "Follow selection", "Filter", "Sort by next column"} <= titles
        await pilot.press("E")
        await wait_for(pilot, lambda: isinstance(app.screen, EventLogScreen), "the event log")


async def test_help_lists_every_binding_of_the_fleet_screens(fleet: EmbeddedFleet) -> None:
    app = console_app(fleet.targets, refresh_s=HOUR)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), "help")
        table = app.screen.query_one("#help-table", DataTable)
        listed = {str(table.get_row_at(r)[3]) for r in range(table.row_count)}
        declared = {b.id for cls in (GpuFleetApp, FleetScreen, LineTable, FleetTable, ProcessTable,
                                     EventLogScreen, EventTable)
                    for b in cls.__dict__.get("BINDINGS", []) if isinstance(b, Binding) and b.id}
        declared.discard("app.purge_disabled")  # only in a read-only console
        assert declared - listed == set()


async def test_the_footer_fits_80_columns_in_every_view(fleet: EmbeddedFleet) -> None:
    app = console_app(fleet.targets, refresh_s=HOUR)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        for view, keys in (("grouped", ()), ("flat", ("v",)), ("processes", ("v", "o")), ("log", ("o", "l"))):
            await pilot.press(*keys)
            await pilot.pause()
            shown = {key.key: key for key in app.screen.query(FooterKey) if key.display}
            assert "question_mark" in shown and "q" in shown, view
            for key in shown.values():
                assert key.region.right <= 80, (view, key.key)


async def test_the_console_freezes_its_start_up_objects_out_of_the_collector(
        fleet: EmbeddedFleet, monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    freezes: list[int] = []
    monkeypatch.setattr(gc, "freeze", lambda: freezes.append(sum(
        1 for n in app.fleet.nodes.values() if n.reachable is not None)))
    app = console_app(fleet.targets, refresh_s=HOUR, freeze_gc=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: all_polled(app) and bool(freezes), "the freeze")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.redraws >= 3, "more redraws")
        assert freezes == [4]  # once, when every node had answered
    plain = console_app(fleet.targets, refresh_s=HOUR)  # tests and embedders: the collector as usual
    async with plain.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: all_polled(plain), "every node's first answer")
    assert freezes == [4]


async def test_a_view_switch_keeps_the_footers_keys_and_shows_only_the_views_own(fleet: EmbeddedFleet) -> None:
    # Recomposing the footer mounted every key again and laid the screen out a second time:
    # the slowest part of `o`. Its keys are now hidden and shown where they are.
    app = console_app(fleet.targets, refresh_s=HOUR)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        await pilot.pause()
        composed = list(app.screen.query(FooterKey))

        def shown() -> list[str]:
            return [key.key for key in app.screen.query(FooterKey) if key.display]

        grouped = shown()
        assert "v" in grouped and "o" in grouped
        await pilot.press("o")
        await pilot.pause()
        assert screen_of(app).view == "processes"
        assert shown() == [k for k in grouped if k != "v"]  # `v` toggles GPU views: not here
        await pilot.press("v")  # no binding in this view: nothing happens
        await pilot.pause()
        assert screen_of(app).view == "processes"
        await pilot.press("o", "v")
        await pilot.pause()
        assert screen_of(app).view == "flat" and shown() == grouped
        assert list(app.screen.query(FooterKey)) == composed  # the same widgets throughout

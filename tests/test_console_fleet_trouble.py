"""Issue 13 §2: trouble first (summary line, outages on top and notified, event log, thresholds, filter words)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.cells import cell_len
from textual.widgets import Static

from gpufleet.console.app import GpuFleetApp
from gpufleet.console.messages import NodeFailed
from gpufleet.console.screens.events import EventLogScreen, EventTable
from gpufleet.console.state import FleetState, RowQuery
from gpufleet.console.thresholds import Levels
from gpufleet.console.widgets.fleet_table import FleetTable
from gpufleet.console.widgets.node_header import node_header_parts
from gpufleet.server.config import ConfigError, ConsoleSettings, ConsoleThresholds, load_settings
from gpufleet.server.gpu.simulated import simulated_backends
from gpufleet.server.schemas import GpuStatusResponse
from tests.test_console_live_fixtures import (
    FROZEN,
    Clock,
    EmbeddedFleet,
    LiveNode,
    all_polled,
    console_app,
    start_nodes,
    wait_for,
)

HOUR = 3600.0
A100, H100, L40S, WS = "dgx-a100-01", "dgx-h100-01", "inf-l40s-01", "ws-gpu-01"


def _status(backend: object, at: datetime | None = None) -> GpuStatusResponse:
    snap = backend.snapshot()  # type: ignore[attr-defined]
    return GpuStatusResponse(timestamp=at or snap.taken_at, gpus=list(snap.gpus),
                             processes=list(snap.processes), total_gpus=len(snap.gpus),
                             node=snap.node, models=backend.loaded_models())  # type: ignore[attr-defined]


@pytest.fixture
def state() -> FleetState:
    """Four simulated nodes at the frozen hour: l40s GPU 2 throttles, a100 GPU 5 has ECC errors."""
    backends = simulated_backends(4, clock=lambda: FROZEN)
    fleet = FleetState([b.node_name for b in backends], refresh_s=2)
    for backend in backends:
        fleet.apply_status(backend.node_name, _status(backend), 3.0, FROZEN)
    fleet.update_health(FROZEN)
    return fleet


@pytest.fixture(scope="module")
def fleet4() -> Iterator[EmbeddedFleet]:
    started = EmbeddedFleet(4)
    yield started
    started.close()


@pytest.fixture
async def live4() -> AsyncIterator[list[LiveNode]]:
    started = await start_nodes(4)
    yield started
    for node in started:
        await node.stop()


def gpu_keys(state: FleetState, query: str) -> set[tuple[str, int | None]]:
    return {r.key for r in state.rows(RowQuery(query=query)) if r.kind == "gpu"}


# -- the summary line -------------------------------------------------------------------


async def test_the_summary_line_adds_up_the_fleet(fleet4: EmbeddedFleet) -> None:
    app = console_app(fleet4.targets, refresh_s=HOUR)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        gpus = [g for n in app.fleet.nodes.values() for g in n.status.gpus]  # type: ignore[union-attr]
        busy = sum(1 for g in gpus if (g.utilization.gpu_percent or 0) >= 5)
        used = sum(g.memory.used_mb for g in gpus) / 1024
        total = sum(g.memory.total_mb for g in gpus) / 1024
        power = sum(g.power_draw_w or 0 for g in gpus)
        util = sum(g.utilization.gpu_percent or 0 for g in gpus) / len(gpus)
        over = sum(1 for g in gpus if (g.temperature_c or 0) >= 85 or g.memory.percent_used >= 90
                   or 100 * (g.power_draw_w or 0) / (g.power_limit_w or 1) >= 95
                   or g.throttling or g.health_problems())
        assert over >= 2  # the throttling L40S and the A100 with ECC errors at least
        text = str(app.screen.query_one("#fleet-summary", Static).render())
        assert text == (f"4/4 nodes up · 22 GPUs: {busy} busy, {22 - busy} idle · mem {used:.0f}/{total:.0f} GB"
                        f" · {power:.0f} W · util {util:.0f}% avg · {over} over threshold")
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        summary = app.screen.query_one("#fleet-summary", Static)
        short = str(summary.render())
        assert cell_len(short) <= summary.content_region.width
        assert f"{over} over" in short and "4/4 up" in short


# -- outages: on top, notified, logged --------------------------------------------------


async def test_an_outage_rises_to_the_top_is_notified_logged_and_recovers(live4: list[LiveNode]) -> None:
    clock = Clock()
    app = console_app([n.target for n in live4], refresh_s=HOUR, clock=clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        table = app.screen.query_one(FleetTable)
        assert table.rows[0].key == (A100, None)
        start_toasts = len(app._notifications)
        ws = next(n for n in live4 if n.name == WS)
        await ws.stop()
        clock.advance(minutes=7)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.fleet.nodes[WS].health == "down"
                       and app.screen._drawn_version == app.fleet.version, "the outage")  # type: ignore[attr-defined]
        await wait_for(pilot, lambda: len(app._notifications) > start_toasts, "the toast")
        assert table.rows[0].key == (WS, None)  # the last node by name, now first
        assert "✖ unreachable" in table.render_line(1).text and "last seen 7m ago" in table.render_line(1).text
        toasts = [n.message for n in app._notifications][start_toasts:]
        assert toasts == [f"{WS} is unreachable: connection failed"]
        assert "1 down" in str(app.screen.query_one("#fleet-summary", Static).render())
        await pilot.press("slash", *"down", "enter")
        await pilot.pause()
        assert {r.node.name for r in table.rows} == {WS}
        await pilot.press("escape")

        await pilot.press("l")  # the event log, with the time it happened
        await wait_for(pilot, lambda: isinstance(app.screen, EventLogScreen), "the event log")
        log = app.screen.query_one(EventTable)
        first = log.rows[0]
        assert first.node == WS and first.at == FROZEN + timedelta(minutes=7) and first.severity == "error"
        assert "15:07:00Z" in log.render_line(1).text and "is unreachable" in log.render_line(1).text
        await pilot.press("f")

        await ws.start()  # back on the same port
        clock.advance(minutes=1)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.fleet.nodes[WS].health == "up"
                       and app.screen._drawn_version == app.fleet.version, "the recovery")  # type: ignore[attr-defined]
        assert table.rows[0].key == (A100, None) and table.rows[-1].node.name == WS
        await wait_for(pilot, lambda: f"{WS} is back up (was down)" in [n.message for n in app._notifications],
                       "the recovery toast")

        # A network blip takes every node at once: one toast names them, the log has each.
        before = len(app._notifications)
        for node in live4:
            await node.stop()
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: all(n.health == "down" for n in app.fleet.nodes.values())
                       and len(app._notifications) > before, "every outage")
        await pilot.pause()
        burst = [n.message for n in app._notifications][before:]
        assert len(burst) == 1 and burst[0].startswith("4 changes on 4 nodes:")
        assert sum(1 for e in app.events if "is unreachable" in e.text) == 5


async def test_gpu_trouble_is_marked_and_logged_and_a_new_fault_is_notified() -> None:
    clock = Clock(FROZEN.replace(hour=9))  # the L40S is warm but not yet throttling
    moving = EmbeddedFleet(4, clock=clock)
    try:
        app = console_app(moving.targets, refresh_s=HOUR, clock=clock)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
            await pilot.pause()
            logged = {(e.node, e.gpu): e for e in app.events if e.gpu is not None}
            # The A100's ECC errors were there before the console looked: logged and marked, no toast.
            fault = [e for e in app.events if (e.node, e.gpu) == (A100, 5)]
            assert any("1 uncorrected ECC error(s)" in e.text and e.severity == "error" for e in fault)
            assert any("row remapping pending: reset the GPU; 2 XID error(s), last XID 63" in e.text for e in fault)
            assert (L40S, 2) not in logged
            assert not any("GPU" in n.message for n in app._notifications)
            clock.now = FROZEN  # the afternoon: the L40S throttles on heat
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: any((e.node, e.gpu) == (L40S, 2) for e in app.events), "the throttling")
            await pilot.pause()
            throttle = next(e for e in app.events if (e.node, e.gpu) == (L40S, 2))
            assert throttle.severity == "warning" and throttle.text == f"{L40S} GPU 2: throttling: sw thermal slowdown"
            assert not any("throttling" in n.message for n in app._notifications)  # comes and goes: logged only
            table = app.screen.query_one(FleetTable)
            for key, mark in (((A100, 5), "!"), ((L40S, 2), "↓"), ((A100, 4), " ")):
                index = next(i for i, r in enumerate(table.rows) if r.key == key)
                table.scroll_to(y=index, animate=False, immediate=True)
                line = table.render_line(1 + index - table.scroll_offset.y).text
                assert line[4:6] == f"{mark} ", (key, line)
            # At 80 columns the log's NODE column says node/GPU (cut in the middle) and WHAT
            # the trouble itself, not the node and GPU again ("dgx-a100-01 GPU 5: 1 uncorrected ECC er…").
            await pilot.press("l")
            await pilot.resize_terminal(80, 24)
            await pilot.pause()
            log = app.screen.query_one(EventTable)
            lines = [log.render_line(1 + i).text for i in range(len(log.rows))]
            ecc = next(line for line in lines if "uncorrected" in line)
            assert "dgx-a…-01/5  1 uncorrected ECC error(s)" in ecc and "GPU 5:" not in ecc
    finally:
        moving.close()


def test_a_fault_that_appears_later_is_not_initial(state: FleetState) -> None:
    from gpufleet.server.schemas import GpuEcc

    node = state.nodes[H100]
    assert node.status is not None
    gpus = [g.model_copy(update={"ecc_errors": GpuEcc(volatile_corrected=0, volatile_uncorrected=3)})
            if g.index == 1 else g for g in node.status.gpus]
    later = FROZEN + timedelta(seconds=2)
    state.apply_status(H100, node.status.model_copy(update={"gpus": gpus, "timestamp": later}), 3.0, later)
    (event,) = state.update_health(later, only=H100)
    assert (event.gpu, event.severity, event.initial) == (1, "error", False)
    assert event.text == f"{H100} GPU 1: 3 uncorrected ECC error(s)"
    assert state.update_health(later) == []  # nothing new: no events


def test_trouble_first_and_its_setting(state: FleetState) -> None:
    state.apply_failure(H100, "connection failed", FROZEN + timedelta(seconds=5))
    state.apply_failure(WS, "HTTP 401: Missing or invalid API key", FROZEN + timedelta(seconds=5),
                        auth=True, status=401)
    events = state.update_health(FROZEN + timedelta(seconds=5))
    assert {(e.node, e.kind) for e in events} == {(H100, "down"), (WS, "auth")}
    nodes = [r.node.name for r in state.rows(RowQuery()) if r.kind == "node"]
    assert nodes == [H100, WS, A100, L40S]
    nodes = [r.node.name for r in state.rows(RowQuery(trouble_first=False)) if r.kind == "node"]
    assert nodes == [A100, H100, L40S, WS]
    # Flat: the troubled nodes stand above the GPUs as node rows, their old readings left out.
    flat = state.rows(RowQuery(flat=True, sort="temp", reverse=True))
    assert [r.key for r in flat[:2]] == [(H100, None), (WS, None)]
    assert all(r.kind == "gpu" and r.node.name in (A100, L40S) for r in flat[2:])
    header = "".join(t for t, _ in node_header_parts(state.nodes[WS], 120, now=FROZEN + timedelta(seconds=5)))
    assert "✖ auth failed: 401" in header and "unreachable" not in header


def test_a_node_whose_readings_stop_moving_goes_stale_and_comes_back() -> None:
    backend = simulated_backends(1, clock=lambda: FROZEN)[0]
    state = FleetState(["n"], refresh_s=2)
    state.apply_status("n", _status(backend), 3.0, FROZEN)
    assert [e.kind for e in state.update_health(FROZEN)] == []  # a first answer raises nothing
    late = FROZEN + timedelta(seconds=14)
    state.apply_status("n", _status(backend), 3.0, late)  # an answer, but the same reading time
    assert state.update_health(late) == []
    later = FROZEN + timedelta(seconds=16)  # past stale_after_s (15 s) with no new reading
    state.apply_status("n", _status(backend), 3.0, later)
    (event,) = state.update_health(later)
    assert event.kind == "stale" and event.severity == "warning" and "no new readings since 15:00:00Z" in event.text
    assert state.nodes["n"].trouble
    header = "".join(t for t, _ in node_header_parts(state.nodes["n"], 120, now=later))
    assert "◌ stale" in header and "no new reading since 16s ago" in header
    fresh = FROZEN + timedelta(seconds=20)
    state.apply_status("n", _status(backend, at=fresh), 3.0, fresh)
    (back,) = state.update_health(fresh)
    assert back.kind == "up" and back.text == "n is back up (was stale)"


# -- thresholds ---------------------------------------------------------------------------


def test_thresholds_come_from_the_config_file_and_are_checked(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[console.thresholds]\ntemp_warn_c = 60\ntemp_crit_c = 70\nutil_warn_pct = 10\n")
    thresholds = load_settings(config).console.thresholds
    assert (thresholds.temp_warn_c, thresholds.temp_crit_c, thresholds.util_warn_pct) == (60, 70, 10)
    assert thresholds.memory_crit_pct == 90 and thresholds.ecc_uncorrected_crit == 1  # the defaults stay
    config.write_text("[console.thresholds]\ntemp_warn_c = 90\n")
    with pytest.raises(ConfigError, match=re.escape("temp_warn_c (90) is above temp_crit_c (85)")):
        load_settings(config)
    config.write_text('[console.thresholds]\nthrottle_reasons = ["sw_power_cap", "too_hot"]\n')
    with pytest.raises(ConfigError, match=re.escape("unknown throttle reason(s) too_hot")):
        load_settings(config)


def test_levels_follow_the_thresholds(state: FleetState) -> None:
    gpu = state.nodes[L40S].gpu(2)
    assert gpu is not None and gpu.temperature_c == 92
    default = Levels()
    assert default.temp(gpu.temperature_c) == "crit" and default.throttle_reasons(gpu) == ["sw_thermal_slowdown"]
    relaxed = Levels(ConsoleThresholds(temp_warn_c=95, temp_crit_c=100, throttle_reasons=[]))
    assert relaxed.temp(gpu.temperature_c) == "ok" and relaxed.throttle_reasons(gpu) == []
    faulty = state.nodes[A100].gpu(5)
    assert faulty is not None and default.ecc_level(faulty) == "crit" and default.over(faulty)
    assert Levels(ConsoleThresholds(ecc_uncorrected_crit=5)).ecc_level(faulty) == "ok"


async def test_utilization_bar_takes_the_threshold_colours(fleet4: EmbeddedFleet) -> None:
    async def util_styles(thresholds: ConsoleThresholds) -> tuple[object, object, object]:
        settings = ConsoleSettings(refresh_s=HOUR, request_timeout_s=2.0, thresholds=thresholds)
        app = GpuFleetApp(settings, fleet4.targets, clock=Clock(), refresh_s=HOUR, mask_rtt=True)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
            table = app.screen.query_one(FleetTable)
            table.blur()
            index = next(i for i, r in enumerate(table.rows) if r.key == (A100, 4))  # 74 % busy
            assert table.rows[index].gpu.utilization.gpu_percent == 74  # type: ignore[union-attr]
            line = list(table.render_line(1 + index))
            # The last solid bar on the line is utilization's (memory's comes first).
            bar = [s for s in line if s.text.strip() and set(s.text) <= set("█▉▊▋▌▍▎▏")][-1]
            return (bar.style.color, table.get_component_rich_style("line-table--bar-ok").color,  # type: ignore[union-attr]
                    table.get_component_rich_style("line-table--bar-warn").color)

    bar, ok, warn = await util_styles(ConsoleThresholds())
    assert bar == ok
    bar, ok, warn = await util_styles(ConsoleThresholds(util_warn_pct=50, util_crit_pct=90))
    assert bar == warn


# -- filter words ---------------------------------------------------------------------


def test_filter_matches_state_words_pids_and_users(state: FleetState) -> None:
    gpus = {(n.name, g.index): g for n in state.nodes.values() for g in n.status.gpus}  # type: ignore[union-attr]
    assert gpu_keys(state, "idle") == {k for k, g in gpus.items() if (g.utilization.gpu_percent or 0) < 5}
    assert gpu_keys(state, "busy") == {k for k, g in gpus.items() if (g.utilization.gpu_percent or 0) >= 5}
    assert gpu_keys(state, "hot") == {k for k, g in gpus.items() if (g.temperature_c or 0) >= 75}
    assert gpu_keys(state, "hot l40s") == {k for k in gpu_keys(state, "hot") if k[0] == L40S
                                           or gpus[k].name.endswith("L40S")}
    assert gpu_keys(state, "throttled") == {(L40S, 2)}
    assert gpu_keys(state, "errors") == {(A100, 5)} == gpu_keys(state, "ecc")
    pid = state.nodes[A100].processes_on(0)[0].pid
    assert gpu_keys(state, str(pid)) == {(A100, 0)}
    users = {(n.name, p.gpu_index) for n in state.nodes.values() for p in n.status.processes  # type: ignore[union-attr]
             if p.user == "data-science"}
    assert gpu_keys(state, "data-science") >= users and users
    assert gpu_keys(state, "down") == set()
    state.apply_failure(H100, "connection failed", FROZEN)
    state.update_health(FROZEN)
    assert gpu_keys(state, "down") == {(H100, i) for i in range(8)}  # the node matches: all its GPUs
    assert [r.key for r in state.rows(RowQuery(query="down")) if r.kind == "node"] == [(H100, None)]
    procs = state.process_rows(query=str(pid))
    assert [(r.node.name, r.proc.pid) for r in procs] == [(A100, pid)]
    theirs = {(r.node.name, r.proc.pid) for r in state.process_rows() if r.proc.user == "data-science"}
    assert theirs and theirs <= {(r.node.name, r.proc.pid) for r in state.process_rows(query="data-science")}


def test_event_times_are_the_console_clock() -> None:
    when = datetime(2026, 3, 11, 16, 30, tzinfo=UTC)
    fleet = FleetState(["n"], refresh_s=2)
    fleet.apply_failure("n", "connection failed", when)
    (event,) = fleet.update_health(when)
    assert event.at == when and event.text == "n is unreachable: connection failed"


def test_a_gpu_hovering_at_a_threshold_is_one_line_in_the_log(state: FleetState) -> None:
    node = state.nodes[H100]
    assert node.status is not None
    base = node.status

    def answer(second: int, temp: int, throttle: list[str]) -> list[str]:
        at = FROZEN + timedelta(seconds=second)
        gpus = [g.model_copy(update={"temperature_c": temp, "throttle_reasons": throttle}) if g.index == 0 else g
                for g in base.gpus]
        state.apply_status(H100, base.model_copy(update={"gpus": gpus, "timestamp": at}), 3.0, at)
        return [e.text.removeprefix(f"{H100} GPU 0: ") for e in state.update_health(at, only=H100)]

    assert answer(1, 86, ["sw_thermal_slowdown"]) == ["throttling: sw thermal slowdown", "86°C, at or over 85°C"]
    assert answer(2, 84, []) == []  # under critical but still hot; throttling gone for one answer
    assert answer(3, 86, ["sw_thermal_slowdown"]) == []  # back: nothing new to say
    assert answer(4, 80, []) == []  # warm (over 75 °C): still hot
    assert answer(5, 70, []) == []
    assert answer(6, 70, []) == ["no longer throttling"]  # three answers without it
    assert answer(7, 70, []) == ["cooled below the critical temperature"]  # three under the warning
    assert answer(8, 70, []) == []


def test_the_summary_fits_every_width_and_big_fleets_read_in_tb_and_kw() -> None:
    from gpufleet.console.widgets.summary import FleetTotals, fitted, summary_variants, width_of

    big = FleetTotals(nodes=65, up=64, down=1, auth=0, stale=0, gpus=496, busy=205, idle=291,
                      used_mb=11_516 * 1024, total_mb=34_961 * 1024, power_w=92_600.0, mean_util=31.4, over=45)
    wide = "".join(text for text, _ in fitted(summary_variants(big), 200))
    assert wide == ("64/65 nodes up, 1 down · 496 GPUs: 205 busy, 291 idle · mem 11.2/34.1 TB · 92.6 kW"
                    " · util 31% avg · 45 over threshold")
    for width in range(30, 200):
        assert width_of(fitted(summary_variants(big), width)) <= width, width
    narrowest = "".join(text for text, _ in fitted(summary_variants(big), 30))
    assert narrowest.startswith("64/65 up, 1 down") and narrowest.endswith("45 over")


async def test_a_node_going_down_in_place_is_dimmed_at_once() -> None:
    """Without trouble first the down node keeps its place: its unchanged rows are still redrawn dim."""
    doomed = EmbeddedFleet(2)
    try:
        settings = ConsoleSettings(refresh_s=HOUR, request_timeout_s=2.0, trouble_first=False)
        app = GpuFleetApp(settings, doomed.targets, clock=Clock(), refresh_s=HOUR, mask_rtt=True)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
            table = app.screen.query_one(FleetTable)
            dim = table.get_component_rich_style("line-table--dim").color
            index = next(i for i, r in enumerate(table.rows) if r.key == (A100, 3))
            await pilot.pause()
            assert table._lines[(A100, 3)][1] is True  # drawn while the node answered
            doomed.stop_node(A100)
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: app.fleet.nodes[A100].health == "down"
                           and app.screen._drawn_version == app.fleet.version, "the outage")  # type: ignore[attr-defined]
            await pilot.pause()
            assert table.rows[index].key == (A100, 3)  # same place, same row object
            # The line was drawn again after the outage (for an unreachable node), and dim.
            drawn_row, drawn_for, segments = table._lines[(A100, 3)]
            assert drawn_row is table.rows[index] and drawn_for is False
            figures = [seg for seg in segments if seg.text.strip().endswith(("°C", "%", "W"))]
            assert len(figures) == 3 and all(seg.style is not None and seg.style.color == dim for seg in figures)
            name = next(seg for seg in segments if "A100" in seg.text)  # the GPU's name too, not only its figures
            assert name.style is not None and name.style.color == dim
    finally:
        doomed.close()


async def test_a_nodes_error_text_is_shown_as_text_never_as_markup(fleet4: EmbeddedFleet) -> None:
    """An error body from whatever answers at a node's address ends up in a toast: "[/]" crashed it."""
    app = console_app(fleet4.targets, refresh_s=HOUR)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        error = "HTTP 503: maintenance [/] until [b]noon"
        app.post_message(NodeFailed(WS, error, FROZEN, status=503))
        await wait_for(pilot, lambda: app.fleet.nodes[WS].health == "down"
                       and any(error in n.message for n in app._notifications), "the outage toast")
        await pilot.pause()
        toast = next(n for n in app._notifications if error in n.message)
        assert not toast.markup and app.is_running
        await pilot.press("l")
        await pilot.pause()
        log = app.screen.query_one(EventTable)
        assert any(error in log.render_line(1 + i).text for i in range(len(log.rows)))

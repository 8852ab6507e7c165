"""`k` on the GPU detail's process table: the signal confirmation, driven by pilot over real nodes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from textual.content import Content
from textual.widgets import Button, Static

from gpufleet.console.app import GpuFleetApp
from gpufleet.console.screens.detail import GpuDetailScreen
from gpufleet.console.screens.help import collect_bindings
from gpufleet.console.screens.signal import SignalModal
from gpufleet.console.widgets.fleet_table import FleetTable
from gpufleet.console.widgets.gpu_process_table import GpuProcessTable
from tests.test_console_live_fixtures import (
    LiveNode,
    all_polled,
    console_app,
    start_nodes,
    wait_for,
)

WS, A100 = "ws-gpu-01", "dgx-a100-01"


@pytest.fixture
async def nodes() -> AsyncIterator[dict[str, LiveNode]]:
    started = await start_nodes(2)
    yield {n.name: n for n in started}
    for node in started:
        await node.stop()


async def open_detail(pilot, app: GpuFleetApp, node: str, gpu: int) -> GpuDetailScreen:  # type: ignore[no-untyped-def]
    await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
    assert app.screen.query_one(FleetTable).move_to((node, gpu))
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, GpuDetailScreen), "the detail screen")
    await pilot.pause()
    return app.screen  # type: ignore[return-value]


async def open_signal(pilot, app: GpuFleetApp) -> SignalModal:  # type: ignore[no-untyped-def]
    await pilot.press("k")
    await wait_for(pilot, lambda: isinstance(app.screen, SignalModal), "the signal confirmation")
    await pilot.pause()
    return app.screen  # type: ignore[return-value]


async def test_k_names_process_memory_and_user_and_cancel_is_the_default(nodes: dict[str, LiveNode]) -> None:
    app = console_app([nodes[WS].target])
    async with app.run_test(size=(80, 24)) as pilot:
        detail = await open_detail(pilot, app, WS, 1)
        proc = detail.query_one(GpuProcessTable).current
        assert proc is not None and proc.user == "data-science"
        modal = await open_signal(pilot, app)
        text = str(modal.query_one("#signal-target", Static).render())
        assert str(proc.pid) in text and proc.name in text and "data-science" in text
        assert f"{(proc.memory_mb or 0) / 1024:.1f} GB" in text
        assert modal.focused is modal.query_one("#signal-cancel", Button)
        assert modal.signal == "TERM" and str(modal.query_one("#signal-go", Button).label) == "Send TERM"
        await pilot.press("enter")  # the focused Cancel
        await wait_for(pilot, lambda: isinstance(app.screen, GpuDetailScreen), "back on the detail")
        assert modal.result is None and modal.error is None
        # Esc cancels too.
        await open_signal(pilot, app)
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, GpuDetailScreen), "back on the detail")


async def test_choosing_kill_names_it_on_the_button(nodes: dict[str, LiveNode]) -> None:
    app = console_app([nodes[WS].target])
    async with app.run_test(size=(120, 40)) as pilot:
        await open_detail(pilot, app, WS, 0)
        modal = await open_signal(pilot, app)
        await pilot.click("#signal-kill")
        await pilot.pause()
        assert modal.signal == "KILL" and str(modal.query_one("#signal-go", Button).label) == "Send KILL"
        assert modal.has_class("-kill")
        # Choosing is not sending: focus is not on the send button, and nothing was sent.
        assert modal.focused is not modal.query_one("#signal-go", Button)
        assert modal.result is None and modal.error is None


async def test_a_child_row_signals_its_gpu_process_and_says_so(nodes: dict[str, LiveNode]) -> None:
    app = console_app([nodes[A100].target])
    async with app.run_test(size=(120, 40)) as pilot:
        detail = await open_detail(pilot, app, A100, 0)
        table = detail.query_one(GpuProcessTable)
        parent = table.current
        assert parent is not None and parent.children
        await pilot.press("down")
        row = table.current_row
        assert row is not None and row[0].pid == parent.pid and row[1] == parent.children[0].pid
        modal = await open_signal(pilot, app)
        assert modal.proc.pid == parent.pid and modal.child_pid == parent.children[0].pid
        text = str(modal.query_one("#signal-target", Static).render())
        assert f"child {parent.children[0].pid}" in text and f"signals {parent.pid}" in text


async def test_a_sent_signal_is_shown_and_the_process_is_gone_at_the_next_poll(
        nodes: dict[str, LiveNode]) -> None:
    app = console_app([nodes[WS].target])
    async with app.run_test(size=(120, 40)) as pilot:
        detail = await open_detail(pilot, app, WS, 1)
        table = detail.query_one(GpuProcessTable)
        proc = table.current
        assert proc is not None and proc.visible
        modal = await open_signal(pilot, app)
        await pilot.click("#signal-go")  # TERM, the default
        await wait_for(pilot, lambda: modal.result is not None or modal.error is not None,
                       "the signal's answer")
        assert modal.error is None and modal.result is not None
        assert modal.result.pid == proc.pid and modal.result.signal == "TERM"
        await pilot.pause()
        outcome = str(modal.query_one("#signal-outcome", Static).render())
        assert f"Sent TERM to {proc.pid}" in outcome and modal.has_class("-success")
        assert str(modal.query_one("#signal-cancel", Button).label) == "Close"
        await pilot.press("enter")  # Close
        await wait_for(pilot, lambda: isinstance(app.screen, GpuDetailScreen), "back on the detail")
        # the simulated node let the process go: the next poll no longer lists it
        await wait_for(pilot, lambda: all(p.pid != proc.pid for p in table.processes),
                       "the signalled process gone from the table")


async def test_a_failed_signal_is_shown_and_nothing_claims_success(nodes: dict[str, LiveNode]) -> None:
    app = console_app([nodes[WS].target])
    async with app.run_test(size=(80, 24)) as pilot:
        await open_detail(pilot, app, WS, 0)
        modal = await open_signal(pilot, app)
        await nodes[WS].stop()
        await pilot.click("#signal-go")
        await wait_for(pilot, lambda: modal.error is not None, "the failed signal")
        await pilot.pause()
        outcome = str(modal.query_one("#signal-outcome", Static).render())
        assert "Signal not sent" in outcome and "connection failed" in outcome
        assert modal.result is None and modal.has_class("-error")
        assert str(modal.query_one("#signal-cancel", Button).label) == "Close"
        assert modal.focused is modal.query_one("#signal-cancel", Button)


async def test_readonly_hides_signal_and_says_so_when_k_is_pressed(nodes: dict[str, LiveNode]) -> None:
    app = console_app([nodes[WS].target], readonly=True)
    async with app.run_test(size=(120, 40)) as pilot:
        detail = await open_detail(pilot, app, WS, 1)
        assert detail.check_action("signal", ()) is False
        shown = {b.binding.action for b in app.active_bindings.values() if b.enabled and b.binding.show}
        assert "signal" not in shown and "purge" not in shown
        commands = [c.title for c in app.get_system_commands(detail)]
        assert not any("Signal" in title for title in commands)
        await pilot.press("k")
        await pilot.pause()
        assert isinstance(app.screen, GpuDetailScreen)
        messages = [n.message for n in app._notifications]
        assert any("read-only" in m and "Signal" in m for m in messages), messages
        # A notification is markup: as its toast shows it, "[console]" stays (it was taken for a tag).
        shown = [Content.from_markup(m).plain for m in messages]
        assert any("(--readonly, or readonly in [console])" in text for text in shown), shown


async def test_signal_is_in_the_palette_and_remappable(nodes: dict[str, LiveNode]) -> None:
    app = console_app([nodes[WS].target])
    app.set_keymap({"detail.signal": "x"})
    async with app.run_test(size=(120, 40)) as pilot:
        detail = await open_detail(pilot, app, WS, 1)
        assert any(c.title == "Signal process" for c in app.get_system_commands(detail))
        await pilot.press("k")  # no longer the signal key
        await pilot.pause()
        assert isinstance(app.screen, GpuDetailScreen)
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, SignalModal), "the signal confirmation")


async def test_help_lists_signal_with_its_key_and_a_remapped_key_says_readonly(
        nodes: dict[str, LiveNode]) -> None:
    app = console_app([nodes[WS].target], readonly=True)
    app.set_keymap({"detail.signal": "x"})
    async with app.run_test(size=(120, 40)) as pilot:
        await open_detail(pilot, app, WS, 1)
        entries = {e.binding_id: e for e in collect_bindings(app, [GpuDetailScreen])}
        assert entries["detail.signal"].keys == "x" and entries["detail.signal"].section == "GPU detail"
        await pilot.press("x")
        await pilot.pause()
        assert isinstance(app.screen, GpuDetailScreen)
        assert any("read-only" in n.message for n in app._notifications)

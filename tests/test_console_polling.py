"""Polling schedule and redraw coalescing: phases spread the polls, a burst of answers redraws once."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import AsyncIterator

import httpcore
import pytest
from textual.message import Message

from gpufleet.console.config import NodeTarget
from gpufleet.console.messages import NodeFailed, NodePolled
from gpufleet.console.poller import SharedTransportFactory, poll_node, skip_missing_sniffio
from gpufleet.server.client import ConnectionFailed
from tests.test_console_live_fixtures import (
    FROZEN,
    LiveNode,
    all_polled,
    console_app,
    start_nodes,
    wait_for,
)


class DeadClient:
    """A client whose node never answers."""

    def __init__(self) -> None:
        self.calls = 0

    async def get_gpu_status(self) -> object:
        self.calls += 1
        raise ConnectionFailed(None, "Cannot reach http://127.0.0.1:9")


async def run_polls(phase_s: float, rounds: int) -> tuple[list[float], list[Message]]:
    pauses: list[float] = []
    posted: list[Message] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == rounds:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await poll_node(NodeTarget("n1", "http://127.0.0.1:9", None), DeadClient(),  # type: ignore[arg-type]
                        interval_s=10.0, timeout_s=1.0, post=posted.append, clock=lambda: FROZEN,
                        phase_s=phase_s, sleep=sleep)
    return pauses, posted


async def test_phase_delays_only_the_second_poll() -> None:
    pauses, posted = await run_polls(phase_s=4.0, rounds=3)
    # A poll that failed at once waits out the interval; the phase is added once.
    assert 13.0 < pauses[0] <= 14.0
    assert all(9.0 < p <= 10.0 for p in pauses[1:])
    assert len(posted) == 3 and all(isinstance(m, NodeFailed) for m in posted)
    assert posted[0].error == "connection failed"  # type: ignore[attr-defined]


async def test_without_a_phase_the_interval_is_kept() -> None:
    pauses, _ = await run_polls(phase_s=0.0, rounds=2)
    assert all(9.0 < p <= 10.0 for p in pauses)


@pytest.fixture
async def nodes() -> AsyncIterator[list[LiveNode]]:
    started = await start_nodes(3)
    yield started
    for node in started:
        await node.stop()


async def test_a_burst_of_answers_redraws_once(nodes: list[LiveNode]) -> None:
    app = console_app([n.target for n in nodes], refresh_s=3600)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: all_polled(app), "every node's first answer")
        node = app.fleet.nodes[nodes[0].name]
        assert node.status is not None
        version, redraws = app.fleet.version, app.redraws
        for _ in range(40):
            app.post_message(NodePolled(node.name, node.status, 1.0, FROZEN))
        await wait_for(pilot, lambda: app.fleet.version == version + 40
                       and app.screen._drawn_version == app.fleet.version,  # type: ignore[attr-defined]
                       "the burst to be drawn")
        assert 1 <= app.redraws - redraws <= 2  # coalesced: not one redraw per answer


async def test_httpcore_does_not_search_for_a_missing_sniffio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "sniffio", raising=False)
    installed = importlib.util.find_spec("sniffio") is not None
    SharedTransportFactory()  # the console's client factory applies it
    if installed:
        assert sys.modules.get("sniffio") is not None
    else:
        assert sys.modules["sniffio"] is None
        with pytest.raises(ImportError):
            import sniffio  # noqa: F401
    skip_missing_sniffio()  # idempotent
    assert httpcore._synchronization.current_async_library() == "asyncio"


@pytest.mark.parametrize(("refresh_s", "every_s"), [(1.0, 0.5), (0.5, 0.25), (3600.0, 0.5)])
def test_answers_redraw_at_most_twice_a_refresh_interval(
        refresh_s: float, every_s: float, monkeypatch: pytest.MonkeyPatch) -> None:
    # Four redraws a second at a 1 s refresh composited the summary and the changed lines twice
    # as often as the answers need; a key press still redraws at once (not through this).
    import gpufleet.console.app as console_app_module

    app = console_app([], refresh_s=refresh_s)
    timers: list[float] = []
    monkeypatch.setattr(app, "set_timer", lambda delay, callback: timers.append(delay))
    monkeypatch.setattr(console_app_module.time, "monotonic", lambda: 1000.0)
    app._last_redraw = 1000.0 - 0.1  # the last redraw was 0.1 s ago
    app._schedule_redraw()
    app._schedule_redraw()  # one pending redraw covers every answer until it runs
    assert app.redraw_interval_s == every_s and timers == [pytest.approx(every_s - 0.1)]

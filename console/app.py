"""The console app: composes the screens, runs one poller per node and owns the fleet state.

Pollers post messages; the handlers here apply them to ``FleetState`` and mark
the screen dirty; one short timer per burst redraws it, so 64 nodes answering
in the same 50 ms cost one redraw, not 64.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from functools import partial
from pathlib import Path

from textual import events
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Input, Static

from gpufleet.console.config import NodeTarget
from gpufleet.console.datasource import DataSource
from gpufleet.console.events import TITLES, Event, EventLog
from gpufleet.console.messages import NodeFailed, NodePolled
from gpufleet.console.poller import ClientFactory, SharedTransportFactory, poll_node
from gpufleet.console.screens.detail import GpuDetailScreen
from gpufleet.console.screens.fleet import FleetScreen
from gpufleet.console.screens.purge import PurgeModal
from gpufleet.console.screens.signal import SignalModal
from gpufleet.console.state import FleetState
from gpufleet.console.thresholds import Levels
from gpufleet.console.widgets.footer import ConsoleFooter
from gpufleet.server.client import AsyncGpuFleetClient
from gpufleet.server.config import ConsoleSettings
from gpufleet.server.schemas import GpuProcess, PurgeResult, SignalName, SignalResult, utc_now

log = logging.getLogger("gpufleet.console")

REDRAW_DELAY_S = 0.05  # a burst of node updates within this window redraws once
# Polls are spread over the interval, so a big fleet answers all the time: redraw at most twice
# an interval, within these bounds (a key press still redraws at once), or every answer would
# repaint the table. Each redraw sorts and sums the fleet and composites the summary line and
# every changed line on screen: twice an interval shows every answer within half of one.
MIN_REDRAW_INTERVAL_S = 0.25
MAX_REDRAW_INTERVAL_S = 0.5
PURGE_TIMEOUT_S = 120.0  # a purge waits for runtimes to unload and memory to settle
LIGHT_THEME = "textual-light"
NOTIFY_EACH_UP_TO = 3  # more changes than this in one redraw are notified as one summary
PURGE_BINDING_IDS = ("fleet.purge", "detail.purge")


class NoServerScreen(Screen[None]):
    """Stands in for chargeback and hosts when no local server is known."""

    BINDINGS = [Binding("escape", "app.switch_mode('fleet')", "Fleet", id="noserver.back")]

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def compose(self):  # type: ignore[no-untyped-def]
        yield Static(f"{self.what}: no local gpufleet server is configured or running.\n"
                     "Start one with `gpufleet serve`, or set [console] local_server_url.",
                     id="noserver-text")
        yield ConsoleFooter()


class GpuFleetApp(App[None]):
    """The gpufleet console."""

    CSS_PATH = "console.tcss"
    TITLE = "gpufleet"
    BINDINGS = [
        Binding("q", "quit", "Quit", id="app.quit", tooltip="Quit the console"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True, id="app.quit_ctrl_c"),
        Binding("f", "switch_mode('fleet')", "Fleet", id="app.fleet", tooltip="The live fleet"),
        Binding("c", "switch_mode('chargeback')", "Chargeback", id="app.chargeback",
                tooltip="Cost by team, architecture and model"),
        Binding("h", "switch_mode('hosts')", "Hosts", id="app.hosts", tooltip="Agents reporting to the server"),
        Binding("question_mark", "help", "Help", id="app.help", tooltip="Every key binding"),
        Binding("t", "toggle_dark", "Theme", show=False, id="app.toggle_theme", tooltip="Switch light / dark"),
        Binding("ctrl+r", "poll_now", "Poll now", show=False, id="app.poll_now",
                tooltip="Poll every node now instead of waiting for the next tick"),
        Binding("l", "switch_mode('events')", "Log", id="app.events",
                tooltip="Node outages, recoveries and GPU trouble, with their times"),
        # Read-only: the purge key says why nothing happens (the screens' purge is disabled).
        Binding("p", "purge_disabled", "Purge is disabled (read-only)", show=False,
                id="app.purge_disabled", tooltip="Say that this console is read-only"),
    ]

    def __init__(
        self,
        settings: ConsoleSettings,
        targets: Iterable[NodeTarget],
        *,
        data_source: DataSource | None = None,
        clock: Callable[[], datetime] = utc_now,
        readonly: bool | None = None,
        refresh_s: float | None = None,
        client_factory: ClientFactory | None = None,
        mask_rtt: bool = False,
        export_dir: Path | None = None,
        freeze_gc: bool = False,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.targets = {t.name: t for t in targets}
        self.data_source = data_source
        self.clock = clock
        self.readonly = settings.readonly if readonly is None else readonly
        self.refresh_s = max(0.5, refresh_s if refresh_s is not None else settings.refresh_s)
        self.client_factory: ClientFactory = client_factory or SharedTransportFactory()
        self.mask_rtt = mask_rtt
        self.fleet = FleetState(self.targets, refresh_s=self.refresh_s, levels=Levels(settings.thresholds))
        self.events = EventLog()
        self._pending_events: list[Event] = []
        self._clients: dict[str, AsyncGpuFleetClient] = {}
        self._redraw_pending = False
        self._last_redraw = 0.0
        self.redraw_interval_s = min(MAX_REDRAW_INTERVAL_S, max(MIN_REDRAW_INTERVAL_S, self.refresh_s / 2))
        self.redraws = 0  # how many coalesced redraws ran (tests and the bench read it)
        self.theme = settings.theme
        self._dark_theme = settings.theme if settings.theme != LIGHT_THEME else "textual-dark"
        keymap = dict(settings.keybindings)
        if "fleet.purge" in keymap and "app.purge_disabled" not in keymap:
            keymap["app.purge_disabled"] = keymap["fleet.purge"]  # the read-only notice follows purge's key
        if keymap:
            self.set_keymap(keymap)
        self.add_mode("fleet", self._fleet_screen)
        self.add_mode("chargeback", self._chargeback_screen)
        self.add_mode("hosts", self._hosts_screen)
        self.add_mode("events", self._events_screen)
        self._export_dir = export_dir
        self._freeze_gc = freeze_gc  # once every node has answered (see _redraw)

    # -- screens -------------------------------------------------------------------

    def _fleet_screen(self) -> Screen[None]:
        return FleetScreen(self.fleet, clock=self.clock, readonly=self.readonly, mask_rtt=self.mask_rtt,
                           trouble_first=self.settings.trouble_first, follow=self.settings.follow_selection,
                           view=self.settings.view)

    def _events_screen(self) -> Screen[None]:
        from gpufleet.console.screens.events import EventLogScreen

        return EventLogScreen(self.events, clock=self.clock)

    def _chargeback_screen(self) -> Screen[None]:
        if self.data_source is None:
            return NoServerScreen("Chargeback")
        from gpufleet.console.screens.chargeback import ChargebackScreen

        return ChargebackScreen(self.data_source, clock=lambda: self.clock().date(),
                                simulated=self.fleet.simulated, export_dir=self._export_dir)

    def _hosts_screen(self) -> Screen[None]:
        if self.data_source is None:
            return NoServerScreen("Hosts")
        from gpufleet.console.screens.hosts import HostsScreen

        return HostsScreen(self.data_source, clock=self.clock, simulated=self.fleet.simulated)

    def open_detail(self, node: str, gpu_index: int) -> None:
        self.push_screen(GpuDetailScreen(self.fleet, node, gpu_index, clock=self.clock,
                                         readonly=self.readonly, mask_rtt=self.mask_rtt))

    def open_purge(self, node: str, gpu_indices: list[int] | None) -> None:
        if self.readonly:
            return
        target = self.targets[node]
        self.push_screen(PurgeModal(self.fleet.nodes[node], gpu_indices, partial(self._purge, target)))

    async def _purge(self, target: NodeTarget, force: bool, gpu_indices: list[int] | None) -> PurgeResult:
        # Its own client: a purge outlives the poll timeout, and must not queue behind a poll.
        client = self.client_factory(target, PURGE_TIMEOUT_S)
        try:
            result = await client.purge_gpu(force=force, gpu_indices=gpu_indices)
        finally:
            await client.aclose()
        log.info("purge on %s (force=%s, gpus=%s): %s", target.name, force, gpu_indices, result.status)
        return result

    def open_signal(self, node: str, gpu_index: int, proc: GpuProcess, child_pid: int | None) -> None:
        if self.readonly:
            return
        self.push_screen(SignalModal(node, gpu_index, proc, partial(self._signal, self.targets[node]),
                                     child_pid=child_pid))

    async def _signal(self, target: NodeTarget, pid: int, signal: SignalName) -> SignalResult:
        client = self.client_factory(target, self.settings.request_timeout_s)
        try:
            result = await client.signal_process(pid, signal)
        finally:
            await client.aclose()
        log.info("signal %s to pid %s on %s: %s", signal, pid, target.name, result.status)
        return result

    def action_help(self) -> None:
        from gpufleet.console.screens.chargeback import ChargebackScreen
        from gpufleet.console.screens.events import EventLogScreen
        from gpufleet.console.screens.help import HelpScreen
        from gpufleet.console.screens.hosts import HostsScreen

        screens: list[type] = [FleetScreen, GpuDetailScreen, ChargebackScreen, HostsScreen, EventLogScreen]
        if self.readonly:
            hidden = set(PURGE_BINDING_IDS) | {"detail.signal"}
        else:
            hidden = {"app.purge_disabled"}
            screens[2:2] = [PurgeModal, SignalModal]
        self.push_screen(HelpScreen(screens, hidden_ids=hidden,
                                    note="Read-only console: purge and signals are disabled." if self.readonly
                                    else ""))

    def _purge_disabled_applies(self) -> bool:
        screen = self.screen
        return self.readonly and hasattr(screen, "action_purge")

    def action_purge_disabled(self) -> None:
        self.notify("Purge is disabled: this console is read-only (--readonly, or readonly in \\[console]).",
                    title="Read-only", severity="warning", timeout=5)

    def on_key(self, event: events.Key) -> None:
        """A letter typed just before a text box took focus (after `/`, say) is the box's.

        Keys already queued for the table when a binding moves focus to a box reach the app
        with the box focused; a focused box stops the letters it gets itself, so a printable
        key arriving here was meant for it: typed fast or pasted, `/down` filters for "down"
        instead of `o` switching to the process view.
        """
        focused = self.focused
        if isinstance(focused, Input) and event.is_printable and event.character:
            event.stop()
            focused.insert_text_at_cursor(event.character)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "purge_disabled":
            return self._purge_disabled_applies()
        # The key of the view already shown does nothing, so it leaves the footer to keys that do.
        return not (action == "switch_mode" and bool(parameters) and parameters[0] == self.current_mode)

    def action_toggle_dark(self) -> None:
        self.theme = self._dark_theme if self.theme == LIGHT_THEME else LIGHT_THEME

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Fleet", "The live fleet", partial(self.switch_mode, "fleet"))
        yield SystemCommand("Chargeback", "Cost by team", partial(self.switch_mode, "chargeback"))
        yield SystemCommand("Hosts", "Agents reporting to the server", partial(self.switch_mode, "hosts"))
        yield SystemCommand("Event log", "Node outages, recoveries and GPU trouble, with their times",
                            partial(self.switch_mode, "events"))
        yield SystemCommand("Help", "Every key binding", self.action_help)
        yield SystemCommand("Toggle light/dark", "Switch the theme", self.action_toggle_dark)
        yield SystemCommand("Poll now", "Poll every node now", self.action_poll_now)
        if isinstance(screen, FleetScreen):
            yield SystemCommand("Filter", "Filter the fleet", screen.action_filter)
            yield SystemCommand("Sort by next column", "Cycle the sort column", screen.action_sort_next)
            yield SystemCommand("Reverse sort", "Reverse the sort order", screen.action_sort_reverse)
            yield SystemCommand("Grouped / flat view", "Every GPU in one list, or grouped by node",
                                screen.action_toggle_flat)
            yield SystemCommand("Processes view", "Every GPU process of the fleet (again: back to the GPUs)",
                                screen.action_toggle_processes)
            yield SystemCommand("Fold / unfold node", "Fold the node under the cursor", screen.action_toggle_node)
            yield SystemCommand("Fold / unfold all nodes", "Fold every node, or unfold them all",
                                screen.action_toggle_all_nodes)
            yield SystemCommand("Follow selection", "Follow the selected GPU as live values re-sort the list",
                                screen.action_toggle_follow)
            if not self.readonly:
                yield SystemCommand("Purge", "Purge the GPU or node under the cursor", screen.action_purge)
        if isinstance(screen, GpuDetailScreen) and not self.readonly:
            yield SystemCommand("Purge this GPU", "Purge this GPU's memory", screen.action_purge)
            yield SystemCommand("Signal process", "Send TERM, INT or KILL to the process under the cursor",
                                screen.action_signal)

    # -- polling -------------------------------------------------------------------

    def on_mount(self) -> None:
        self.switch_mode("fleet")
        for target in self.targets.values():
            self._clients[target.name] = self.client_factory(target, self.settings.request_timeout_s)
        self.action_poll_now()
        # Staleness is a matter of time passing, so it is checked even when no answer arrives.
        self.set_interval(max(1.0, min(self.refresh_s, 5.0)), self._schedule_redraw)

    def action_poll_now(self) -> None:
        """(Re)start every node's poller: each polls at once, then on its own schedule.

        Node i of n is given the phase i/n of the interval, so the steady state is an
        even trickle of answers rather than one burst per interval.
        """
        count = max(1, len(self.targets))
        for i, target in enumerate(self.targets.values()):
            client = self._clients[target.name]
            # exclusive=True: the group's previous loop is cancelled, so a node never has two.
            self.run_worker(
                poll_node(target, client, interval_s=self.refresh_s,
                          timeout_s=self.settings.request_timeout_s,
                          post=self.post_message, clock=self.clock,
                          phase_s=self.refresh_s * i / count),
                name=f"poll {target.name}", group=f"poll:{target.name}",
                exclusive=True, exit_on_error=False,
            )

    async def on_unmount(self) -> None:
        self.workers.cancel_all()
        closers = [c.aclose() for c in self._clients.values()]
        for owner in (self.data_source, self.client_factory):
            close = getattr(owner, "aclose", None)
            if close is not None:
                closers.append(close())
        await asyncio.gather(*closers, return_exceptions=True)
        self._clients.clear()

    def on_node_polled(self, message: NodePolled) -> None:
        self.fleet.apply_status(message.node, message.status, message.rtt_ms, message.at)
        self._pending_events += self.fleet.update_health(self.clock(), only=message.node)
        self._schedule_redraw()

    def on_node_failed(self, message: NodeFailed) -> None:
        self.fleet.apply_failure(message.node, message.error, message.at, auth=message.auth,
                                 status=message.status)
        self._pending_events += self.fleet.update_health(self.clock(), only=message.node)
        self._schedule_redraw()

    def _schedule_redraw(self) -> None:
        if not self._redraw_pending:
            self._redraw_pending = True
            since = time.monotonic() - self._last_redraw
            self.set_timer(max(REDRAW_DELAY_S, self.redraw_interval_s - since), self._redraw)

    def _redraw(self) -> None:
        self._redraw_pending = False
        self._last_redraw = time.monotonic()
        if not self.screen_stack:  # shutting down: the screens are already gone
            return
        # Health changes with each answer (applied at once) and with time passing (checked here);
        # their notifications go out once per redraw, so a burst is one toast.
        events, self._pending_events = self._pending_events + self.fleet.update_health(self.clock()), []
        if events:
            self.events.extend(events)
            self._notify_events(events)
        self.redraws += 1
        if self._freeze_gc and all(n.reachable is not None for n in self.fleet.nodes.values()):
            # Everything built so far (Textual's widgets, the first answers, imported modules)
            # lives as long as the console: out of the collector's sight, a full collection
            # scans only what came later. At 512 GPUs those collections were 80-110 ms pauses,
            # the tail of the key-to-screen time.
            gc.freeze()
            self._freeze_gc = False
        refresh = getattr(self.screen, "refresh_fleet", None)
        if refresh is not None:
            refresh()

    def _notify_events(self, events: list[Event]) -> None:
        """A toast per change of node health and per GPU fault; a burst (a network blip) is one toast.

        A GPU that starts or stops throttling or running hot is only logged: on a busy fleet
        that comes and goes all day. So is a fault a GPU already had when the console started:
        its row is marked and the summary counts it.
        """
        events = [e for e in events if e.kind != "gpu" or (e.severity == "error" and not e.initial)]
        if not events:
            return
        if len(events) <= NOTIFY_EACH_UP_TO:
            for event in events:
                # Plain text: an event quotes what a node answered, which is never markup.
                self.notify(event.text, title=TITLES[event.kind], severity=event.severity,
                            timeout=8 if event.severity == "error" else 5, markup=False)
            return
        worst = "error" if any(e.severity == "error" for e in events) else (
            "warning" if any(e.severity == "warning" for e in events) else "information")
        names = sorted({e.node for e in events})
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        nodes = "1 node" if len(names) == 1 else f"{len(names)} nodes"
        self.notify(f"{len(events)} changes on {nodes}: {shown}. The event log (l) lists each.",
                    title="Fleet changes", severity=worst, timeout=8, markup=False)

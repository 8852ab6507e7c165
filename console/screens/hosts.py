"""Hosts: the agents reporting to the server, their versions, GPU counts and heartbeats.

Mount with ``HostsScreen(source, clock=..., refresh_s=...)``. The list refreshes
every ``refresh_s`` while the screen is shown; a worker fetches and posts a
message, the handler redraws.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Label, Static

from gpufleet.console.datasource import DataSource, DataSourceError
from gpufleet.console.widgets.footer import ConsoleFooter
from gpufleet.server.schemas import HostInfo, HostsResponse, HostStatus

DEFAULT_REFRESH_S = 10.0
COMPACT_BELOW = 100  # columns: narrower screens get short headings and relative times only
COLUMNS = ("Status", "Hostname", "Agent", "GPUs", "Last heartbeat", "Last sample", "First seen")
COMPACT_COLUMNS = ("Status", "Hostname", "Agent", "GPUs", "Heartbeat", "Sample", "First seen")
# Each status is drawn in a theme colour, looked up by variable name at render time.
STATUS_VARIABLES: dict[HostStatus, str] = {"alive": "text-success", "stale": "text-warning", "offline": "text-error"}
STATUS_ORDER: dict[HostStatus, int] = {"offline": 0, "stale": 1, "alive": 2}


def utc_now() -> datetime:
    return datetime.now(UTC)


def relative_age(then: datetime, now: datetime) -> str:
    """``"just now"``, ``"45s ago"``, ``"3m ago"``, ``"2h 5m ago"``, ``"4d ago"``."""
    seconds = int((now - then).total_seconds())
    if seconds < 0:
        return "in the future"
    if seconds < 5:
        return "just now"
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60}m ago"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m ago"
    return f"{seconds // 86400}d ago"


def absolute_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


class HostsScreen(Screen[None]):
    """The hosts table, refreshed periodically while visible."""

    AUTO_FOCUS = "#hosts-table"

    BINDINGS = [Binding("r", "reload", "Reload", id="hosts.reload")]

    DEFAULT_CSS = """
    HostsScreen { layout: vertical; }
    HostsScreen #hosts-title-row { height: 1; padding: 0 1; }
    HostsScreen #hosts-title { text-style: bold; width: 1fr; }
    HostsScreen .badge { background: $warning; color: $text; padding: 0 1; text-style: bold; }
    HostsScreen #hosts-counts { height: 1; padding: 0 1; margin-top: 1; }
    HostsScreen #hosts-counts Label { margin-right: 3; }
    HostsScreen .-alive { color: $text-success; }
    HostsScreen .-stale { color: $text-warning; }
    HostsScreen .-offline { color: $text-error; }
    HostsScreen #hosts-message { height: auto; padding: 1 2; display: none; }
    HostsScreen.-empty #hosts-message, HostsScreen.-failed #hosts-message { display: block; }
    HostsScreen.-failed #hosts-message { color: $text-error; }
    HostsScreen.-empty #hosts-table { display: none; }
    HostsScreen #hosts-table { height: 1fr; margin-top: 1; }
    """

    class HostsLoaded(Message):
        def __init__(self, response: HostsResponse) -> None:
            super().__init__()
            self.response = response

    class HostsFailed(Message):
        def __init__(self, message: str) -> None:
            super().__init__()
            self.message = message

    def __init__(self, source: DataSource, *, clock: Callable[[], datetime] = utc_now,
                 refresh_s: float | None = DEFAULT_REFRESH_S, simulated: bool = False,
                 name: str | None = None, id: str | None = None) -> None:
        super().__init__(name=name, id=id)
        self._source = source
        self._clock = clock
        self._refresh_s = refresh_s
        self._simulated = simulated
        self._timer: Timer | None = None
        self._compact: bool | None = None  # the column set the table has now
        self.response: HostsResponse | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="hosts-title-row"):
            yield Label("Hosts · agents reporting to the local server", id="hosts-title")
            # Shown from the start when the fleet is simulated, then as each answer says: the
            # demo fleet may run beside a server of real data, whose hosts are real.
            badge = Label("SIMULATED DATA", classes="badge", id="hosts-simulated")
            badge.display = self._simulated
            yield badge
        with Horizontal(id="hosts-counts"):
            for status in ("alive", "stale", "offline"):
                yield Label(f"● - {status}", id=f"hosts-count-{status}", classes=f"-{status}")
            yield Label("", id="hosts-updated")
        yield Static("", id="hosts-message")
        yield DataTable(id="hosts-table", cursor_type="row", zebra_stripes=True)
        yield ConsoleFooter()

    def on_mount(self) -> None:
        self._set_columns()
        self.query_one("#hosts-table", DataTable).loading = True
        if self._refresh_s:
            self._timer = self.set_interval(self._refresh_s, self.action_reload)
        self.action_reload()

    @property
    def compact(self) -> bool:
        return self.app.size.width < COMPACT_BELOW

    def _set_columns(self) -> None:
        if self._compact == self.compact:
            return
        self._compact = self.compact
        table = self.query_one("#hosts-table", DataTable)
        table.clear(columns=True)
        table.add_columns(*(COMPACT_COLUMNS if self._compact else COLUMNS))

    def on_resize(self) -> None:
        if self.response is not None and self._compact != self.compact:
            self.post_message(self.HostsLoaded(self.response))

    def on_screen_suspend(self) -> None:
        if self._timer is not None:
            self._timer.pause()

    def on_screen_resume(self) -> None:
        if self._timer is not None:
            self._timer.resume()

    def action_reload(self) -> None:
        self._fetch_hosts()

    @work(exclusive=True, group="hosts")
    async def _fetch_hosts(self) -> None:
        try:
            response = await self._source.hosts()
        except DataSourceError as exc:
            self.post_message(self.HostsFailed(str(exc)))
            return
        self.post_message(self.HostsLoaded(response))

    @on(HostsLoaded)
    def _show_hosts(self, message: HostsLoaded) -> None:
        self.response = message.response
        self.query_one("#hosts-simulated").display = message.response.simulated
        now = self._clock()
        hosts = sorted(message.response.hosts,
                       key=lambda h: (STATUS_ORDER.get(h.status, 0), h.hostname))
        self._set_columns()
        table = self.query_one("#hosts-table", DataTable)
        table.loading = False
        table.clear()
        for host in hosts:
            table.add_row(*self._row(host, now), key=host.hostname)
        counts = Counter(host.status for host in hosts)
        for status in ("alive", "stale", "offline"):
            self.query_one(f"#hosts-count-{status}", Label).update(f"● {counts[status]} {status}")
        interval = message.response.heartbeat_interval_s
        every = f"{interval // 60}m" if interval >= 60 and interval % 60 == 0 else f"{interval}s"
        updated = message.response.generated_at.astimezone(UTC)
        self.query_one("#hosts-updated", Label).update(
            f"heartbeat {every} · updated {updated:%H:%M:%SZ}" if self.compact
            else f"heartbeat every {every} · updated {absolute_time(updated)}")
        self.set_class(not hosts, "-empty")
        self.set_class(False, "-failed")
        if not hosts:
            self.query_one("#hosts-message", Static).update(
                "No agents have reported yet. Start one with `gpufleet agent --server <url>`.")

    @on(HostsFailed)
    def _show_failure(self, message: HostsFailed) -> None:
        self.query_one("#hosts-table", DataTable).loading = False
        self.set_class(True, "-failed")
        self.query_one("#hosts-message", Static).update(
            f"Could not load hosts: {message.message} (press r to retry)")

    def _row(self, host: HostInfo, now: datetime) -> tuple[Text | str, ...]:
        colour = self.app.theme_variables.get(STATUS_VARIABLES.get(host.status, "text-error"), "")
        last_sample = (f"{relative_age(host.last_sample_at, now)}"
                       if host.last_sample_at is not None else "never")
        heartbeat: Text | str = relative_age(host.last_heartbeat, now)
        if not self.compact:
            heartbeat = Text.assemble(heartbeat, " ", (absolute_time(host.last_heartbeat), "dim"))
        first_seen = absolute_time(host.first_heartbeat)
        return (
            Text(f"● {host.status}", style=colour),
            host.hostname,
            host.agent_version,
            str(host.gpu_count),
            heartbeat,
            last_sample,
            first_seen[:10] if self.compact else first_seen,
        )

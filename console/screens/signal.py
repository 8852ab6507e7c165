"""The guarded signal: names the process, its GPU memory and its user, asks, sends, shows the outcome.

Cancel has the focus when the dialog opens, so Enter or Esc sends nothing. The
signal is chosen among TERM (the default: the process may clean up), INT (as
ctrl+c) and KILL (no clean-up); the button names the one that will be sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, RadioButton, RadioSet, Static

from gpufleet.console.poller import describe_error
from gpufleet.console.widgets.format import MEMORY_UNIT, gb
from gpufleet.console.widgets.gpu_process_table import elapsed
from gpufleet.server.schemas import GpuProcess, SignalName, SignalResult

SignalCall = Callable[[int, SignalName], Awaitable[SignalResult]]

SIGNALS: tuple[tuple[SignalName, str], ...] = (
    ("TERM", "TERM: ask it to stop; it may save and clean up"),
    ("INT", "INT: interrupt, as ctrl+c in its terminal"),
    ("KILL", "KILL: stop it at once; nothing is saved"),
)
COMMAND_SHOWN = 160  # characters of the command line in the dialog (it wraps)


def _esc(text: str) -> str:
    """Escape markup in text that came from a server (names, commands, errors)."""
    return text.replace("[", r"\[")


def describe_target(node: str, gpu_index: int, proc: GpuProcess, child_pid: int | None = None) -> list[str]:
    """The confirmation text: which process, on which node and GPU, its GPU memory and its user."""
    memory = f"{gb(proc.memory_mb)} {MEMORY_UNIT}" if proc.memory_mb is not None else "unknown"
    user = proc.user or ("unknown (not visible to this host)" if not proc.visible else "unknown")
    lines = [
        f"Node [b]{_esc(node)}[/b] · GPU {gpu_index}",
        f"Process [b]{proc.pid}[/b] [b]{_esc(proc.name)}[/b] · user [b]{_esc(user)}[/b]",
        f"GPU memory [b]{memory}[/b]"
        + (f" · CPU {proc.cpu_percent:.0f}%" if proc.cpu_percent is not None else "")
        + (f" · running {elapsed(proc.elapsed_s)}" if proc.elapsed_s is not None else ""),
    ]
    if proc.command:
        command = proc.command if len(proc.command) <= COMMAND_SHOWN else proc.command[:COMMAND_SHOWN - 1] + "…"
        lines.append(f"[$text-muted]{_esc(command)}[/]")
    if child_pid is not None:
        lines.append(f"[$text-warning]The selected row is its child {child_pid}: only GPU processes can be "
                     f"signalled, so this signals {proc.pid}.[/]")
    if not proc.visible:
        lines.append("[$text-warning]This host cannot see the process (another PID namespace); "
                     "the node decides whether it may signal it.[/]")
    if proc.children:
        lines.append(f"Its {len(proc.children)} child process(es) get no signal from here; "
                     "most programs stop their children themselves.")
    return lines


def describe_outcome(result: SignalResult) -> str:
    return (f"[$text-success]Sent {result.signal} to {result.pid} ({_esc(result.name)}).[/]\n"
            f"{_esc(result.message)}\nThe process table shows whether it has gone at the next poll.")


class SignalModal(ModalScreen[SignalResult | None]):
    """Confirm a signal to one GPU process; Cancel is focused first."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="signal.cancel", tooltip="Close without signalling")]

    def __init__(self, node: str, gpu_index: int, proc: GpuProcess, send: SignalCall, *,
                 child_pid: int | None = None) -> None:
        super().__init__(id="signal")
        self.node_name, self.gpu_index, self.proc = node, gpu_index, proc
        self.child_pid = child_pid
        self._send = send
        self.result: SignalResult | None = None
        self.error: str | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="signal-dialog"):
            yield Label("Signal a GPU process", id="signal-title")
            yield Static("\n".join(describe_target(self.node_name, self.gpu_index, self.proc,
                                                   self.child_pid)), id="signal-target")
            with RadioSet(id="signal-choice"):
                for i, (name, label) in enumerate(SIGNALS):
                    yield RadioButton(label, value=i == 0, id=f"signal-{name.lower()}")
            yield Static("", id="signal-outcome")
            with Horizontal(id="signal-buttons"):
                yield Button("Cancel", id="signal-cancel", variant="primary")
                yield Button("Send TERM", id="signal-go", variant="error")

    def on_mount(self) -> None:
        self.query_one("#signal-outcome", Static).display = False
        self.query_one("#signal-cancel", Button).focus()

    @property
    def signal(self) -> SignalName:
        pressed = self.query_one("#signal-choice", RadioSet).pressed_index
        return SIGNALS[max(0, pressed)][0]

    @on(RadioSet.Changed, "#signal-choice")
    def _choice_changed(self) -> None:
        self.query_one("#signal-go", Button).label = f"Send {self.signal}"
        self.set_class(self.signal == "KILL", "-kill")

    @on(Button.Pressed, "#signal-cancel")
    def action_cancel(self) -> None:
        self.dismiss(self.result)

    @on(Button.Pressed, "#signal-go")
    def _go(self) -> None:
        go = self.query_one("#signal-go", Button)
        go.disabled = True
        go.label = f"Sending {self.signal}…"
        self.query_one("#signal-choice", RadioSet).disabled = True
        self._run(self.signal)

    @work(exclusive=True, group="signal")
    async def _run(self, signal: SignalName) -> None:
        try:
            result = await self._send(self.proc.pid, signal)
        except Exception as exc:  # every failure is shown, never swallowed
            self.error = describe_error(exc)
            self._finish(f"[$text-error]Signal not sent: {_esc(self.error)}[/]", "error")
        else:
            self.result = result
            self._finish(describe_outcome(result), "success")

    def _finish(self, text: str, status: str) -> None:
        outcome = self.query_one("#signal-outcome", Static)
        outcome.update(text)
        outcome.display = True
        self.query_one("#signal-choice", RadioSet).display = False
        self.query_one("#signal-title", Label).update(
            f"Signal {'sent' if status == 'success' else 'failed'} · {self.node_name}")
        self.set_class(True, f"-{status}")
        self.query_one("#signal-go", Button).display = False
        cancel = self.query_one("#signal-cancel", Button)
        cancel.label = "Close"
        cancel.focus()

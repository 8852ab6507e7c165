"""The guarded purge: says exactly what will happen, asks, runs, then shows what happened."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static, Switch

from gpufleet.console.poller import describe_error
from gpufleet.console.state import NodeState
from gpufleet.console.widgets.format import MEMORY_UNIT, gb, short_gpu_name
from gpufleet.server.schemas import PurgeResult

PurgeCall = Callable[[bool, list[int] | None], Awaitable[PurgeResult]]

FORCE_OFF = "Force is OFF: models in use and busy processes are skipped"
FORCE_ON = "Force is ON: unloads models in use, signals busy processes"
# Rows the dialog's fixed parts take (see console.tcss): border + title + body margin,
# the bordered force row (with its margin), the confirmation input and the buttons.
DIALOG_CHROME_ROWS = 4
FORCE_ROW_ROWS = 6
SHORT_FORCE_ROW_ROWS = 4  # on a short screen the switch is one row, not three
SHORT_BELOW = 30  # screen rows
CONFIRM_ROWS = 3
BUTTON_ROWS = 4
MIN_BODY_ROWS = 3
MAX_BODY_ROWS = 30


def _esc(text: str) -> str:
    """Escape markup in text that came from a server (model and process names, errors)."""
    return text.replace("[", r"\[")


def describe_plan(node: NodeState, gpu_indices: list[int] | None, *, force: bool = False) -> list[str]:
    """The confirmation text: memory in use, each model and whether in use, processes signalled."""
    status = node.status
    lines: list[str] = []
    gpus = [g for g in (status.gpus if status else []) if gpu_indices is None or g.index in gpu_indices]
    scope = "every GPU" if gpu_indices is None else ", ".join(f"GPU {i}" for i in gpu_indices)
    lines.append(f"Node [b]{_esc(node.name)}[/b] · {scope}")
    if not node.reachable:
        lines.append("[$text-error]This node is not answering: the purge will most likely fail.[/]")
    used = sum(g.memory.used_mb for g in gpus)
    total = sum(g.memory.total_mb for g in gpus)
    # One line for one GPU: at 80x24 with force on, every line of the plan must fit unscrolled.
    one = f" ({short_gpu_name(gpus[0].name)})" if len(gpus) == 1 else ""
    lines.append(f"Memory in use: [b]{gb(used)} / {gb(total)} {MEMORY_UNIT}[/b]{one}")
    if len(gpus) == 2:
        for gpu in gpus:
            lines.append(f"  GPU {gpu.index} {short_gpu_name(gpu.name)}: {gb(gpu.memory.used_mb)} {MEMORY_UNIT} used")
    elif len(gpus) > 2:
        lines.append(f"  {MEMORY_UNIT} used per GPU: " + " · ".join(f"{g.index}: {gb(g.memory.used_mb)}" for g in gpus))
    models = node.models_on(gpu_indices)
    runtimes = [m for m in models if m.runtime != "process"]
    processes = [m for m in models if m.runtime == "process"]
    lines.append("Loaded models (unloaded by the purge):" if runtimes else "No loaded models reported.")
    for model in runtimes:
        on = list(model.gpu_indices or [])
        on = on or [g.index for g in (status.gpus if status else []) if g.model_tag == model.name]
        on = on or ([model.gpu_index] if model.gpu_index is not None else [])
        where = ("GPU " if len(on) == 1 else "GPUs ") + ",".join(map(str, on)) if on else "any GPU"
        size = f"{gb(model.memory_mb)} {MEMORY_UNIT}" if model.memory_mb is not None else "size unknown"
        if not model.in_use:
            state = "[$text-success]idle: unloaded[/]"
        else:
            state = "[$text-error]in use: unloaded (force)[/]" if force else "[$text-warning]in use: skipped unless forced[/]"
        lines.append(f"  {_esc(model.name)} ({model.runtime}, {where}, {size}) {state}")
        # a model sharded over GPUs outside the selection is unloaded whole: say what else it frees
        beyond = [i for i in on if gpu_indices is not None and i not in gpu_indices]
        if beyond and (force or not model.in_use):
            lines.append(f"    also frees GPU{'s' if len(beyond) > 1 else ''} {', '.join(map(str, beyond))}")
    if processes:
        lines.append("Processes that would be signalled (SIGTERM, then SIGKILL):")
        for proc in processes:
            if not proc.in_use:
                state = "idle"
            else:
                state = "[$text-error]busy: signalled (force)[/]" if force else "[$text-warning]busy: only with force[/]"
            lines.append(f"  {_esc(proc.name)} (GPU {proc.gpu_index}) {state}")
    others = [p for p in (status.processes if status else [])
              if gpu_indices is None or p.gpu_index in gpu_indices]
    if others:
        lines.append(f"{len(others)} GPU process(es) on these GPUs; a process is only signalled "
                     "when a configured runtime owns it.")
    return lines


def describe_result(result: PurgeResult) -> list[str]:
    """The outcome: status, freed memory, models unloaded and skipped, actions, errors, advice."""
    colour = {"success": "$text-success", "partial": "$text-warning", "error": "$text-error"}[result.status]
    lines = [
        f"Status: [{colour}]{result.status}[/]",
        f"Freed [b]{result.memory_freed_gb:.1f} {MEMORY_UNIT}[/b]: {result.memory_before.used_gb:.1f} → "
        f"{result.memory_after.used_gb:.1f} of {result.memory_after.total_gb:.1f} {MEMORY_UNIT}",
        "Models unloaded: " + (", ".join(_esc(m) for m in result.models_unloaded) or "none"),
    ]
    # The server lists an in-use skip under both errors and skipped: show it once, as a skip.
    skipped = set(result.skipped)
    errors = [e for e in result.errors if e not in skipped]
    if result.skipped:
        lines.append("[$text-warning]Skipped:[/]")
        lines += [f"  [$text-warning]• {_esc(s)}[/]" for s in result.skipped]
    lines.append("Actions:" if result.actions else "Actions: none")
    lines += [f"  • {_esc(a)}" for a in result.actions]
    if errors:
        lines.append("[$text-error]Errors:[/]")
        lines += [f"  [$text-error]✖ {_esc(e)}[/]" for e in errors]
    lines.append(f"Recommendation: {_esc(result.recommendation)}")
    return lines


class PurgeModal(ModalScreen[PurgeResult | None]):
    """Confirm a purge of some GPUs of one node; Cancel is focused first."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="purge.cancel", tooltip="Close without purging")]

    def __init__(self, node: NodeState, gpu_indices: list[int] | None, purge: PurgeCall) -> None:
        super().__init__(id="purge")
        self.node = node
        self.gpu_indices = gpu_indices
        self._purge = purge
        self.result: PurgeResult | None = None
        self.error: str | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="purge-dialog"):
            yield Label("Purge GPU memory", id="purge-title")
            # Only the plan scrolls: the force switch, its confirmation and the buttons stay whole.
            with VerticalScroll(id="purge-body", can_focus=False):
                yield Static("\n".join(describe_plan(self.node, self.gpu_indices)), id="purge-plan")
                yield Static("", id="purge-result")
            with Horizontal(id="purge-force-row") as row:
                row.border_title = "force"
                yield Switch(value=False, id="purge-force")
                yield Label(FORCE_OFF, id="purge-force-label")
            yield Input(placeholder=f"type {self.node.name} to confirm force", id="purge-confirm")
            with Horizontal(id="purge-buttons"):
                yield Button("Cancel", id="purge-cancel", variant="primary")
                yield Button("Purge", id="purge-go", variant="error")

    def on_mount(self) -> None:
        self.query_one("#purge-confirm", Input).display = False
        self.query_one("#purge-result", Static).display = False
        self.query_one("#purge-cancel", Button).focus()
        self._fit_body()

    def on_resize(self) -> None:
        self._fit_body()

    def _fit_body(self) -> None:
        """Give the plan whatever height the fixed parts leave, so they are never squeezed."""
        short = self.size.height < SHORT_BELOW
        self.set_class(short, "-short")
        fixed = DIALOG_CHROME_ROWS + BUTTON_ROWS
        if self.query_one("#purge-force-row").display:
            fixed += SHORT_FORCE_ROW_ROWS if short else FORCE_ROW_ROWS
        if self.query_one("#purge-confirm", Input).display:
            fixed += CONFIRM_ROWS
        room = self.size.height - fixed
        self.query_one("#purge-body").styles.max_height = max(MIN_BODY_ROWS, min(MAX_BODY_ROWS, room))
        self.call_after_refresh(self._body_focusable)

    def _body_focusable(self) -> None:
        """Tab stops at the plan only when it scrolls (and then shows it has focus), never invisibly."""
        body = self.query_one("#purge-body", VerticalScroll)
        body.can_focus = body.max_scroll_y > 0

    @property
    def force(self) -> bool:
        return self.query_one("#purge-force", Switch).value

    def _ready(self) -> bool:
        if not self.force:
            return True
        return self.query_one("#purge-confirm", Input).value.strip() == self.node.name

    @on(Switch.Changed, "#purge-force")
    def _force_changed(self, event: Switch.Changed) -> None:
        confirm = self.query_one("#purge-confirm", Input)
        confirm.display = event.value
        self.query_one("#purge-force-label", Label).update(FORCE_ON if event.value else FORCE_OFF)
        # The plan says what force changes, model by model, before anyone types the name.
        self.query_one("#purge-plan", Static).update(
            "\n".join(describe_plan(self.node, self.gpu_indices, force=event.value)))
        self.set_class(event.value, "-force")
        self._fit_body()
        if event.value:
            confirm.focus()
        self.query_one("#purge-go", Button).disabled = not self._ready()

    @on(Input.Changed, "#purge-confirm")
    def _confirm_changed(self) -> None:
        self.query_one("#purge-go", Button).disabled = not self._ready()

    @on(Input.Submitted, "#purge-confirm")
    def _confirm_submitted(self) -> None:
        """Enter after the name moves to Purge (one more Enter runs it); a wrong name is said so."""
        if self._ready():
            self.query_one("#purge-go", Button).focus()
        else:
            self.notify(f"Type the node name {self.node.name} exactly to enable Purge.",
                        title="Force not confirmed", severity="warning")

    @on(Button.Pressed, "#purge-cancel")
    def action_cancel(self) -> None:
        self.dismiss(self.result)

    @on(Button.Pressed, "#purge-go")
    def _go(self) -> None:
        if not self._ready():
            return
        go = self.query_one("#purge-go", Button)
        go.disabled = True
        go.label = "Purging…"
        self.query_one("#purge-force", Switch).disabled = True
        self.query_one("#purge-confirm", Input).disabled = True
        self._run(self.force)

    @work(exclusive=True, group="purge")
    async def _run(self, force: bool) -> None:
        try:
            result = await self._purge(force, self.gpu_indices)
        except Exception as exc:  # every failure is shown, never swallowed
            self._show_failure(describe_error(exc))
        else:
            self._show_result(result)

    def _show_result(self, result: PurgeResult) -> None:
        self.result = result
        self._finish("\n".join(describe_result(result)), result.status)

    def _show_failure(self, message: str) -> None:
        self.error = message
        self._finish(f"[$text-error]Purge failed: {_esc(message)}[/]\nNothing is known to have been "
                     "unloaded; check the node and try again.", "error")

    def _finish(self, text: str, status: str) -> None:
        self.query_one("#purge-plan", Static).display = False
        self.query_one("#purge-force-row").display = False
        self.query_one("#purge-confirm", Input).display = False
        outcome = self.query_one("#purge-result", Static)
        outcome.update(text)
        outcome.display = True
        self.query_one("#purge-title", Label).update(f"Purge result · {self.node.name}")
        self.set_class(True, f"-{status}")
        self.query_one("#purge-go", Button).display = False
        cancel = self.query_one("#purge-cancel", Button)
        cancel.label = "Close"
        cancel.focus()
        self._fit_body()

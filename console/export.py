"""CSV export of a chargeback period: the path prompt, the overwrite confirmation and the write.

The modals only collect answers (``ModalScreen.dismiss``); the chargeback screen
decides what to do with them and writes the file in a worker through
:func:`write_csv`.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static


class ExportError(Exception):
    """The CSV could not be written; ``str(exc)`` says why, for a notification."""


def default_export_path(from_: date, to: date, directory: Path | None = None, *,
                        simulated: bool = False) -> Path:
    """``<cwd>/chargeback-<from>-to-<to>.csv``: a name that says which period it holds.

    ``chargeback-simulated-...`` for a store of simulated data: the CSV's columns are fixed
    by the API and cannot say it, and a file outlives the screen that marked it.
    """
    kind = "chargeback-simulated" if simulated else "chargeback"
    return (directory or Path.cwd()) / f"{kind}-{from_.isoformat()}-to-{to.isoformat()}.csv"


def resolve_export_path(text: str) -> Path:
    """The path the user typed, ``~`` expanded; raises ExportError for one that cannot be a file."""
    text = text.strip()
    if not text:
        raise ExportError("Enter a file path")
    path = Path(text).expanduser()
    if path.is_dir():
        raise ExportError(f"{path} is a folder; add a file name")
    if not path.parent.is_dir():
        raise ExportError(f"Folder {path.parent} does not exist")
    return path.absolute()


def write_csv(path: Path, text: str, *, overwrite: bool) -> Path:
    """Write ``text`` to ``path``; without ``overwrite`` an existing file is left untouched."""
    mode = "w" if overwrite else "x"
    try:
        # newline="" keeps the server's CRLF/LF line ends byte for byte.
        with open(path, mode, encoding="utf-8", newline="") as fh:
            fh.write(text)
    except FileExistsError as exc:
        raise ExportError(f"{path} already exists") from exc
    except OSError as exc:
        raise ExportError(f"Cannot write {path}: {exc.strerror or exc}") from exc
    return path


class ExportPathModal(ModalScreen[Path | None]):
    """Asks where to save the CSV; dismisses with the chosen path, or None on cancel."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="export.cancel")]

    DEFAULT_CSS = """
    ExportPathModal { align: center middle; }
    ExportPathModal > Vertical {
        width: 76; max-width: 100%; height: auto;
        border: thick $primary; background: $surface; padding: 1 2;
    }
    ExportPathModal #export-title { text-style: bold; margin-bottom: 1; }
    ExportPathModal #export-error { color: $text-error; height: auto; }
    ExportPathModal Horizontal { height: auto; align-horizontal: right; margin-top: 1; }
    ExportPathModal Button { margin-left: 1; }
    """

    def __init__(self, suggested: Path, period_label: str, *, simulated: bool = False) -> None:
        super().__init__()
        self._suggested = suggested
        self._period_label = period_label
        self._simulated = simulated

    def compose(self) -> ComposeResult:
        with Vertical():
            mark = " · SIMULATED DATA, not billable" if self._simulated else ""
            yield Label(f"Export chargeback CSV · {self._period_label}{mark}", id="export-title")
            yield Label("Save to:")
            yield Input(str(self._suggested), id="export-path")
            yield Static("", id="export-error")
            with Horizontal():
                yield Button("Cancel", id="export-cancel")
                yield Button("Save", id="export-save", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#export-path", Input).focus()

    def show_error(self, message: str) -> None:
        self.query_one("#export-error", Static).update(message)

    @on(Input.Submitted, "#export-path")
    @on(Button.Pressed, "#export-save")
    def _save(self) -> None:
        try:
            path = resolve_export_path(self.query_one("#export-path", Input).value)
        except ExportError as exc:
            self.show_error(str(exc))
            return
        self.dismiss(path)

    @on(Button.Pressed, "#export-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmOverwriteModal(ModalScreen[bool]):
    """Asks before replacing an existing file; Cancel is the default."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="overwrite.cancel")]

    DEFAULT_CSS = """
    ConfirmOverwriteModal { align: center middle; }
    ConfirmOverwriteModal > Vertical {
        width: 76; max-width: 100%; height: auto;
        border: thick $warning; background: $surface; padding: 1 2;
    }
    ConfirmOverwriteModal #overwrite-title { text-style: bold; color: $text-warning; }
    ConfirmOverwriteModal Horizontal { height: auto; align-horizontal: right; margin-top: 1; }
    ConfirmOverwriteModal Button { margin-left: 1; }
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = path

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("File already exists", id="overwrite-title")
            yield Static(f"{self._path}\n\nReplace it with this export?", id="overwrite-body")
            with Horizontal():
                yield Button("Cancel", id="overwrite-cancel", variant="primary")
                yield Button("Overwrite", id="overwrite-confirm", variant="error")

    def on_mount(self) -> None:
        self.query_one("#overwrite-cancel", Button).focus()

    @on(Button.Pressed, "#overwrite-confirm")
    def _confirm(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#overwrite-cancel")
    def action_cancel(self) -> None:
        self.dismiss(False)


def display_path(path: Path) -> str:
    """The path as the notification shows it: ``~`` for the home folder."""
    home = str(Path.home())
    text = str(path)
    return "~" + text[len(home):] if text.startswith(home + os.sep) else text

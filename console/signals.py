"""The console's stop signals: SIGTERM, SIGHUP (a dropped SSH session) and SIGINT end it cleanly.

Before the app runs (servers starting, the sample month loading) a signal raises
:class:`Stopped` in the main thread, so the ``finally`` that stops what was started
runs. While the app runs, a signal asks it to exit through its event loop, and
Textual gives the terminal back (normal screen, mouse tracking off, cursor on).
While the console then stops its servers, further signals are ignored: a second
SIGTERM must not cut a store's last commit short (SIGKILL still ends it, and loses
nothing acknowledged either).
"""

from __future__ import annotations

import asyncio
import signal
from types import FrameType
from typing import Any

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class Stopped(BaseException):
    """A stop signal arrived before the app ran; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """Where the console is in its life decides what a stop signal does; ``received`` remembers it."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def exit_code(self) -> int | None:
        """128 + the signal's number, as a shell reports a process a signal ended; None without one."""
        return None if self.received is None else 128 + self.received

    def raise_stopped(self) -> None:
        """From now on, a stop signal raises :class:`Stopped` in the main thread."""
        for signum in STOP_SIGNALS:
            self._previous.setdefault(signum, signal.getsignal(signum))
            signal.signal(signum, self._raise)

    def _raise(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        self.ignore()  # once: the cleanup this starts must not be interrupted by a second one
        raise Stopped(signum)

    def exit_app(self, loop: asyncio.AbstractEventLoop, app: Any) -> None:
        """While ``app`` runs on ``loop``: a stop signal makes it exit (once), restoring the terminal."""

        def on_signal(signum: int) -> None:
            if self.received is None:
                self.received = signum
                app.exit(return_code=128 + signum)

        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, on_signal, signum)

    def ignore(self) -> None:
        """While the console stops what it started: nothing may interrupt that."""
        for signum in STOP_SIGNALS:
            self._previous.setdefault(signum, signal.getsignal(signum))
            signal.signal(signum, signal.SIG_IGN)

    def restore(self) -> None:
        """The handlers from before :meth:`raise_stopped` (tests run the console in-process)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

"""Start-up overlap: the local server starts on a thread while the UI's modules import.

Finding or starting the local server (a store to open, a server to start) and
importing Textual each take a few hundred milliseconds of mostly different
work (DuckDB and sockets release the GIL), so doing them side by side brings
the first frame forward on a warm start.
"""

from __future__ import annotations

import importlib
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpufleet.console.embedded import Connections
    from gpufleet.server.config import Settings

UI_MODULE = "gpufleet.console.app"


def connect_while_importing(settings: Settings, **kwargs: Any) -> Connections:
    """:func:`start_demo_or_connect` on a thread while the app's modules import here.

    Its exception is raised here; if this thread is interrupted meanwhile (a signal),
    it waits for the start to finish and stops whatever it started before re-raising.
    """
    from gpufleet.console.embedded import start_demo_or_connect

    outcome: dict[str, Any] = {}

    def start() -> None:
        try:
            outcome["connections"] = start_demo_or_connect(settings, **kwargs)
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=start, name="gpufleet-console-start", daemon=True)
    thread.start()
    try:
        importlib.import_module(UI_MODULE)
        thread.join()
    except BaseException:
        thread.join()
        started = outcome.get("connections")
        if started is not None:
            started.stop()
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["connections"]

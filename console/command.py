"""``gpufleet console`` (also plain ``gpufleet``): the live fleet console."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import threading

    from gpufleet.console.config import NodeTarget
    from gpufleet.console.signals import StopSignals
    from gpufleet.server.config import Settings

HELP = "Open the fleet console: live GPUs of every node, purge, chargeback and hosts."
EXIT_CODES = """\
  0    quit (q)
  1    the console could not start its local server or reach one
  2    a bad setting or flag, or no terminal (stdin or stdout is not a tty)
  129  SIGHUP (a dropped SSH session); 130 SIGINT (Ctrl-C); 143 SIGTERM
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, metavar="PATH",
                        help="configuration file (default: the platformdirs config dir)")
    parser.add_argument("--nodes-file", type=Path, action="append", default=[], metavar="PATH",
                        help="extra [[nodes]] TOML (e.g. the one `gpufleet simulate` writes); repeatable")
    parser.add_argument("--readonly", action="store_true", default=None,
                        help="no purge and no signal: watch only")
    parser.add_argument("--refresh", type=float, default=None, metavar="S",
                        help="seconds between polls of each node (default 2, at least 0.5)")
    parser.add_argument("--theme", default=None, help="Textual theme name (t toggles light/dark)")
    parser.add_argument("--no-demo", action="store_true",
                        help="never start the simulated demo fleet, even without an NVIDIA driver")
    parser.add_argument("--demo-nodes", type=int, default=None, metavar="N",
                        help="size of the simulated demo fleet (default 4)")


def _settings(args: argparse.Namespace) -> Settings:
    import tomllib

    from gpufleet.server.config import ConfigError, NodeSettings, load_settings

    settings = load_settings(args.config, overrides={
        "console.readonly": args.readonly,
        "console.refresh_s": args.refresh,
        "console.theme": args.theme,
    })
    extra = []
    for path in args.nodes_file:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        try:
            extra += [NodeSettings.model_validate(n) for n in data.get("nodes", [])]
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    if extra:
        settings = settings.model_copy(update={"nodes": [*settings.nodes, *extra]})
    return settings


NO_TERMINAL = ("gpufleet console: needs a terminal (stdin and stdout); for a one-shot view "
               "of this machine's GPUs, run: gpufleet status")


def run(args: argparse.Namespace) -> int:
    import logging

    from gpufleet.console.config import ConsoleConfigError, NodeTarget, Secret, node_targets
    from gpufleet.server.config import ConfigError

    # Without a terminal (a pipe, /dev/null, cron) the UI's escape codes would be garbage.
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print(NO_TERMINAL, file=sys.stderr)
        return 2
    # The terminal belongs to the UI: log warnings to a file only if asked.
    logging.getLogger("gpufleet").addHandler(logging.NullHandler())
    try:
        settings = _settings(args)
        targets: list[NodeTarget] = node_targets(settings)
    except (ConfigError, ConsoleConfigError) as exc:
        print(f"gpufleet console: {exc}", file=sys.stderr)
        return 2

    from gpufleet.console.embedded import EmbeddedServerError
    from gpufleet.console.signals import Stopped, StopSignals
    from gpufleet.console.startup import connect_while_importing

    demo_nodes = 0 if args.no_demo or targets else (args.demo_nodes if args.demo_nodes is not None else 4)
    signals = StopSignals()
    signals.raise_stopped()  # from here on, a signal still stops what was started
    connections = None
    code = 0
    try:
        connections = connect_while_importing(settings, demo_nodes=demo_nodes)
        names = {t.name for t in targets}
        targets += [node for node in connections.nodes if node.name not in names]
        if settings.console.include_local and not connections.simulated:
            key = Secret(connections.local_key) if connections.local_key else None
            targets.insert(0, NodeTarget("local", connections.local_url, key))
        code = _run_app(settings, targets, connections.local_url, connections.local_key, signals,
                        ready=connections.sample_ready)
    except EmbeddedServerError as exc:
        print(f"gpufleet console: {exc}", file=sys.stderr)
        code = 1
    except Stopped:
        pass  # before the app ran: nothing on screen to restore; stop what was started
    finally:
        signals.ignore()  # the embedded server commits and closes its store: not to be cut short
        try:
            if connections is not None:
                connections.stop()
        finally:
            signals.restore()
    return signals.exit_code or code


def _run_app(settings: Settings, targets: list[NodeTarget], local_url: str, local_key: str | None,
             signals: StopSignals, *, ready: threading.Event | None = None) -> int:
    import asyncio

    from gpufleet.console.app import GpuFleetApp
    from gpufleet.console.datasource import ClientDataSource

    source = ClientDataSource.connect(local_url, local_key, timeout=max(10.0, settings.console.request_timeout_s),
                                      ready=ready)
    app = GpuFleetApp(settings.console, targets, data_source=source, freeze_gc=True)

    async def run_app() -> None:
        # SIGTERM, SIGHUP and SIGINT go through the app's loop: it exits and gives the terminal back.
        signals.exit_app(asyncio.get_running_loop(), app)
        await app.run_async()

    asyncio.run(run_app())
    return int(app.return_code or 0)

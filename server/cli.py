"""The ``gpufleet`` command: dispatches to one subcommand module, imported on demand."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gpufleet.server import __version__

# name -> module; every module exposes HELP, add_arguments(parser) and run(args) -> int.
# A module is listed here only once its command works.
COMMANDS: dict[str, str] = {
    "agent": "gpufleet.server.agent.cli",
    "console": "gpufleet.console.command",
    "serve": "gpufleet.server.commands.serve",
    "simulate": "gpufleet.server.commands.simulate",
    "status": "gpufleet.server.commands.status",
    "keys": "gpufleet.server.commands.keys",
    "report": "gpufleet.server.commands.report",
    "demo": "gpufleet.server.commands.demo",
}
DEFAULT_COMMAND = "console"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command`` only that subcommand's module is imported.

    One broken or heavy command module then never breaks another command, and
    ``gpufleet status`` loads nothing of ``serve`` or the console.
    """
    parser = argparse.ArgumentParser(
        prog="gpufleet",
        description="GPU fleet console and server. With no subcommand, opens the console.",
    )
    parser.add_argument("--version", action="version", version=f"gpufleet {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        if command is not None and name != command:
            continue
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(_module=module_name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, DEFAULT_COMMAND)
    command = argv[0] if argv[0] in COMMANDS else None
    args = build_parser(command).parse_args(argv)
    if getattr(args, "_module", None) is None:
        build_parser().print_help()
        return 2
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

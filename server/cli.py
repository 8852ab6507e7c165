"""The ``gpufleet`` command: dispatches to one subcommand module, imported on demand."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
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
    "export": "gpufleet.server.commands.export",
    "config": "gpufleet.server.commands.config",
    "demo": "gpufleet.server.commands.demo",
}
DEFAULT_COMMAND = "console"
_VERSION_FLAGS = ("-V", "--version")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps epilogs as written and says each option's default where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or "default" in text or default is None or default is False
                or default is True or default == [] or default is argparse.SUPPRESS
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


def command_epilog(module: object) -> str | None:
    """A command's epilog: its own text (``EPILOG``), then its exit codes (``EXIT_CODES``)."""
    parts = [getattr(module, "EPILOG", None)]
    codes = getattr(module, "EXIT_CODES", None)
    if codes:
        parts.append("exit codes:\n" + codes)
    return "\n".join(p.rstrip("\n") + "\n" for p in parts if p) or None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command`` only that subcommand's module is imported.

    One broken or heavy command module then never breaks another command, and
    ``gpufleet status`` loads nothing of ``serve`` or the console.
    """
    parser = argparse.ArgumentParser(
        prog="gpufleet",
        description="GPU fleet console and server. With no subcommand, opens the console.",
        epilog="Run `gpufleet COMMAND --help` for a command's options, defaults and exit codes.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(*_VERSION_FLAGS, action="version", version=f"gpufleet {__version__}",
                        help="print gpufleet's version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        if command is not None and name != command:
            continue
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=module.HELP, description=textwrap.fill(module.HELP, 79),
                                    epilog=command_epilog(module), formatter_class=HelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(_module=module_name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", *_VERSION_FLAGS)):
        argv.insert(0, DEFAULT_COMMAND)
    command = argv[0] if argv[0] in COMMANDS else None
    args = build_parser(command).parse_args(argv)
    if getattr(args, "_module", None) is None:
        build_parser().print_help()
        return 2
    module = importlib.import_module(args._module)
    try:
        code = int(module.run(args) or 0)
        sys.stdout.flush()  # a reader that left shows here, not as a traceback at exit
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_left()


def _reader_left() -> int:
    """Exit quietly when stdout's reader closed the pipe (``gpufleet status | head``).

    Python would print a traceback, and another on the final flush at exit; point
    stdout at /dev/null instead and exit like a process ended by SIGPIPE (128 + 13).
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


if __name__ == "__main__":
    sys.exit(main())

"""Every command's --help: a description, each option explained with its default, exit codes; -V."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from gpufleet.server import __version__
from gpufleet.server.cli import COMMANDS, build_parser, main


def _parsers(parser: argparse.ArgumentParser, path: str) -> list[tuple[str, argparse.ArgumentParser]]:
    """The parser and every sub-command parser below it (``keys create``, ...)."""
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _parsers(sub, f"{path} {name}")
    return found


ALL = [(path, p) for name in COMMANDS
       for path, p in _parsers(build_parser(name)._subparsers._group_actions[0].choices[name],
                               f"gpufleet {name}")]


@pytest.mark.parametrize(("path", "parser"), ALL, ids=[path for path, _ in ALL])
def test_every_command_describes_itself_its_options_and_exit_codes(
        path: str, parser: argparse.ArgumentParser) -> None:
    assert parser.description and len(parser.description) > 20, f"{path}: no description"
    assert parser.epilog and "exit codes:" in parser.epilog, f"{path}: no exit codes"
    assert "\n  0 " in parser.epilog, f"{path}: exit code 0 not explained"
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"{path} {name}: no help text"
    text = parser.format_help()
    assert "exit codes:" in text


def test_a_default_is_said_where_an_option_has_one() -> None:
    text = build_parser("simulate")._subparsers._group_actions[0].choices["simulate"].format_help()
    assert "(default: 4)" in text  # --nodes
    report = build_parser("report")._subparsers._group_actions[0].choices["report"].format_help()
    assert "(default: table)" in report


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_dash_v_prints_the_version_like_dash_dash_version(flag: str, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main([flag])
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == f"gpufleet {__version__}"


def test_the_installed_command_answers_dash_v() -> None:
    result = subprocess.run([sys.executable, "-m", "gpufleet.server.cli", "-V"],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout.strip()) == (0, f"gpufleet {__version__}")


@pytest.mark.parametrize("argv", [["status", "--simulate"], ["config"]],
                         ids=["short output", "output past the pipe buffer"])
def test_a_reader_that_leaves_early_gets_no_traceback(argv: list[str], tmp_path) -> None:
    # `gpufleet status | head -1`: the pipe closes before (or while) the command writes.
    proc = subprocess.Popen([sys.executable, "-m", "gpufleet.server.cli", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err.decode()) == (141, "")


@pytest.mark.parametrize(("path", "parser"), ALL, ids=[path for path, _ in ALL])
def test_help_fits_an_80_column_terminal(path: str, parser: argparse.ArgumentParser,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps options to it; epilogs are ours
    wide = [line for line in parser.format_help().splitlines() if len(line) > 79
            and not line.lstrip().startswith(("duckdb -c", "python -c"))]  # commands to copy
    assert wide == [], f"{path}: lines over 79 columns"

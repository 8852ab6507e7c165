"""The systemd units in deploy/systemd: hardened, and their command lines are ones gpufleet takes."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from gpufleet.server.cli import build_parser

UNITS = Path(__file__).resolve().parent.parent / "deploy" / "systemd"


def _settings(unit: Path) -> dict[str, list[str]]:
    """Every key of the [Service] section with all its values (systemd allows repeats)."""
    found: dict[str, list[str]] = {}
    section = None
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


@pytest.mark.parametrize(("name", "command"), [("gpufleet-serve.service", "serve"),
                                               ("gpufleet-agent.service", "agent")])
def test_a_unit_is_hardened_and_runs_a_command_line_gpufleet_accepts(name: str, command: str) -> None:
    unit = _settings(UNITS / name)
    one = {key: values[-1] for key, values in unit.items()}
    assert one["User"] not in ("", "root") and one["NoNewPrivileges"] == "yes"
    assert one["ProtectSystem"] == "strict" and one["PrivateTmp"] == "yes"
    assert one["Restart"] == "on-failure" and one["UMask"] == "0077"
    argv = shlex.split(one["ExecStart"].replace("${CREDENTIALS_DIRECTORY}", "/run/credentials/x"))
    assert Path(argv[0]).name == "gpufleet" and argv[1] == command
    args = build_parser(command).parse_args(argv[1:])  # exits 2 on a flag gpufleet lacks
    writable = [Path(p) for p in one["ReadWritePaths"].split()]
    state = [Path("/var/lib") / d for d in one["StateDirectory"].split()]
    assert writable == state
    written = args.db if command == "serve" else args.spool_dir
    assert any(written.is_relative_to(w) for w in writable), f"{written} is not writable"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is absent")
def test_systemd_analyze_verifies_both_units() -> None:
    result = subprocess.run(["systemd-analyze", "verify", *map(str, sorted(UNITS.glob("*.service")))],
                            capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if line.strip() and "is not executable" not in line]  # no /opt/gpufleet here
    assert problems == []

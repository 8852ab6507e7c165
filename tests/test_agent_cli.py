"""``gpufleet agent`` arguments: the key file must be private, and --once spools when no server answers."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from server.agent.cli import KeyProblem, read_key

REPO = Path(__file__).resolve().parent.parent


def test_a_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "agent.key"
    key_file.write_text("gf_secret-value\n")
    key_file.chmod(0o644)
    with pytest.raises(KeyProblem, match=r"accessible by group or others \(mode 0644\); run: chmod 600") as exc:
        read_key(key_file, {})
    assert "gf_secret-value" not in str(exc.value)
    key_file.chmod(0o600)
    assert read_key(key_file, {}) == "gf_secret-value"


def test_the_key_comes_from_the_environment_without_a_file() -> None:
    assert read_key(None, {"GPUFLEET_KEY": "gf_env"}) == "gf_env"
    with pytest.raises(KeyProblem, match="no API key"):
        read_key(None, {})


def test_once_with_no_server_listening_spools_the_sample_and_exits_0(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    spool = tmp_path / "spool"
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "agent", "--server", url, "--once", "--simulate",
         "--spool-dir", str(spool)],
        cwd=REPO, env={"GPUFLEET_KEY": "gf_test", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "ingest failed" in done.stderr
    assert sum(p.stat().st_size for p in spool.glob("seg-*.log")) > 0
    assert "gf_test" not in done.stderr

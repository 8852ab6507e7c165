"""``gpufleet agent`` arguments: the key file must be private, --once spools and fails when no server answers, no GPU means no agent."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from gpufleet.server.agent.cli import KeyProblem, open_agent_backend, read_key
from gpufleet.server.gpu.base import BackendUnavailable

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


def free_url() -> str:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def agent(tmp_path: Path, *args: str, pythonpath: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"GPUFLEET_KEY": "gf_test-secret", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run(
        [sys.executable, "-m", "gpufleet.server.cli", "agent", "--spool-dir", str(tmp_path / "spool"), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )


def test_once_with_no_server_listening_spools_the_sample_and_exits_non_zero(tmp_path: Path) -> None:
    done = agent(tmp_path, "--server", free_url(), "--once", "--simulate")
    assert done.returncode == 1, done.stderr
    assert sum(p.stat().st_size for p in (tmp_path / "spool").rglob("seg-*.log")) > 0
    (line,) = [line for line in done.stderr.splitlines() if "not delivered" in line]
    assert "ERROR" in line and "stay in the spool" in line and "next run" in line
    assert "connect" in line.lower()  # why: nothing listens
    assert done.stderr.lower().count("connect") == 1  # said once, not per attempt
    assert "gf_test-secret" not in done.stderr


def test_the_once_startup_line_says_one_sample_not_an_interval(tmp_path: Path) -> None:
    done = agent(tmp_path, "--server", free_url(), "--once", "--simulate")
    assert "one sample of the simulated fleet (--once)" in done.stderr
    assert "every" not in done.stderr


def test_without_simulate_an_agent_on_a_node_without_gpus_refuses_to_start(tmp_path: Path) -> None:
    # The fake pynvml first on the path, with no devices: NVML loads and finds no GPU.
    done = agent(tmp_path, "--server", free_url(), "--once", pythonpath=str(REPO / "tests" / "fakes"))
    assert done.returncode == 2, done.stderr
    assert "no GPU to sample: NVML loaded but found no NVIDIA GPU" in done.stderr
    assert "--simulate" in done.stderr
    assert list((tmp_path / "spool").rglob("seg-*.log")) == []  # nothing made up, nothing spooled
    assert "simulated node" not in done.stderr


def test_the_agent_backend_is_nvml_or_the_simulator_only_when_asked(fake_nvml: ModuleType) -> None:
    with pytest.raises(BackendUnavailable, match="found no NVIDIA GPU"):
        open_agent_backend(simulate=False, nvml_module=fake_nvml)
    fake_nvml.configure([fake_nvml.FakeGpu(uuid="GPU-00000000-1111-2222-3333-444444444444")])
    backend = open_agent_backend(simulate=False, nvml_module=fake_nvml)
    try:
        assert not backend.simulated and backend.gpu_count == 1
    finally:
        backend.close()
    simulated = open_agent_backend(simulate=True)
    try:
        assert simulated.simulated
    finally:
        simulated.close()

"""The terminal is always given back: the real ``gpufleet`` in a pty, signalled, and the bytes it wrote.

The console runs on a machine with one (fake) GPU (tests/fake_gpu_process.py), so nothing
simulated (and no sample month) is involved and it starts in about a second.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gpufleet.server.client import GpuFleetClient
from tests.fake_gpu_process import FAKES, one_gpu_pythonpath

REPO = Path(__file__).resolve().parents[1]
ALT_SCREEN_ON = b"\x1b[?1049h"
# What a terminal needs to be itself again: normal screen, cursor shown, every mouse mode off.
RESTORED = (b"\x1b[?1049l", b"\x1b[?25h", b"\x1b[?1000l", b"\x1b[?1003l", b"\x1b[?1006l")
FRAME_DRAWN = b"\x1b[23;1H"  # the first full frame reaches the last rows of a 24-row terminal
READY_TIMEOUT_S = 30.0

@dataclass
class Console:
    proc: subprocess.Popen[bytes]
    master: int
    data: Path  # the console's data dir
    output: bytearray = field(default_factory=bytearray)

    def read(self, timeout_s: float) -> bool:
        """Read what is there within ``timeout_s``; False once the terminal has nothing more."""
        ready, _, _ = select.select([self.master], [], [], timeout_s)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: every slave end is closed, the console is gone
            return False
        self.output += chunk
        return bool(chunk)

    def wait_drawn(self) -> None:
        """Until the app is on the alternate screen (its signal handlers in place) and drew a frame."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if ALT_SCREEN_ON in self.output and FRAME_DRAWN in self.output.split(ALT_SCREEN_ON, 1)[1]:
                return
            if not self.read(0.5) or self.proc.poll() is not None:
                break
        raise AssertionError(f"the console did not start: {bytes(self.output[-2000:])!r}")

    def drain(self) -> None:
        while self.read(5.0) and self.proc.poll() is None:
            pass
        while self.read(0.0):
            pass


@pytest.fixture
def console(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    home = Path(os.environ["XDG_DATA_HOME"]).parent
    env = {**os.environ, "PYTHONPATH": one_gpu_pythonpath(tmp_path), "TERM": "xterm-256color",
           "GPUFLEET_CONSOLE__LOCAL_SERVER_URL": "http://127.0.0.1:9",  # nothing answers: start one
           "GPUFLEET_SAMPLER__ENABLED": "false"}
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "gpufleet.server.cli"], stdin=slave, stdout=slave,
                            stderr=slave, env=env, cwd=REPO, start_new_session=True)
    os.close(slave)
    running = Console(proc, master, home / "data" / "gpufleet")
    try:
        yield running
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        try:
            os.close(master)
        except OSError:
            pass


def _post_samples(data: Path) -> int:
    """Samples into the console's server, acknowledged (200): they must survive its stop."""
    info = json.loads((data / "console-server.json").read_text())
    key = Path(info["key_file"]).read_text().strip()
    now = int(time.time()) - 120
    batch = [{"timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + i)),
              "gpu_index": 0, "gpu_uuid": "GPU-acked", "power_draw_w": 100.0,
              "utilization_gpu_pct": 50, "utilization_memory_pct": 10, "temperature_c": 40,
              "memory_used_mb": 10} for i in range(50)]
    with GpuFleetClient(info["url"], api_key=key) as client:
        return client.ingest(batch).inserted


def _serve_names_the_console(console: Console) -> None:
    served = subprocess.run([sys.executable, "-m", "gpufleet.server.cli", "serve", "--port", "0",
                             "--no-sampler"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(FAKES)})
    assert served.returncode == 1
    (line,) = served.stderr.strip().splitlines()
    assert f"in use by the gpufleet console (pid {console.proc.pid}); stop it first" in line
    assert "Conflicting lock" not in line


def _stored(data: Path) -> int:
    from gpufleet.server.store import MetricsStore

    with MetricsStore.open(data / "gpufleet.duckdb") as store:
        return int(store.query("SELECT count(*) FROM samples WHERE gpu_uuid = 'GPU-acked'")[0][0])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT],
                         ids=["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_signal_gives_the_terminal_back_and_loses_nothing(console: Console, signum: int) -> None:
    console.wait_drawn()
    assert (console.data / "console-server.json").exists()
    assert (console.data / "gpufleet.duckdb.admin" / "sock").exists()
    acked = _post_samples(console.data)
    assert acked == 50
    if signum == signal.SIGTERM:  # while it runs, whoever else wants the store learns who has it
        _serve_names_the_console(console)
    drawn = len(console.output)
    console.proc.send_signal(signum)
    console.drain()
    assert console.proc.wait(timeout=30) == 128 + signum
    after = bytes(console.output[drawn:])
    for sequence in RESTORED:
        assert sequence in after, (sequence, after[-300:])
    last_on = after.rfind(ALT_SCREEN_ON)
    assert last_on < after.rfind(b"\x1b[?1049l")  # the normal screen is the last word
    assert b"Traceback" not in after
    assert not (console.data / "console-server.json").exists()
    assert not (console.data / "gpufleet.duckdb.admin").exists()
    assert _stored(console.data) == acked


def test_a_dropped_ssh_session_still_stops_everything(console: Console) -> None:
    """SIGHUP after the terminal is gone (sshd closed its end): writes fail, cleanup still runs."""
    console.wait_drawn()
    acked = _post_samples(console.data)
    os.close(console.master)
    console.master = os.open(os.devnull, os.O_RDONLY)  # the fixture closes something harmless
    console.proc.send_signal(signal.SIGHUP)
    assert console.proc.wait(timeout=30) == 128 + signal.SIGHUP
    assert not (console.data / "console-server.json").exists()
    assert not (console.data / "gpufleet.duckdb.admin").exists()
    assert _stored(console.data) == acked


@pytest.mark.parametrize("stdin_tty", [False, True], ids=["stdin-devnull", "stdout-piped"])
def test_without_a_terminal_the_console_points_at_status(tmp_path: Path, stdin_tty: bool) -> None:
    master, slave = os.openpty()
    try:
        with open(os.devnull, "rb") as devnull:
            done = subprocess.run([sys.executable, "-m", "gpufleet.server.cli"],
                                  stdin=slave if stdin_tty else devnull,
                                  capture_output=True, timeout=60, env={**os.environ, "TERM": "xterm"})
    finally:
        os.close(slave)
        os.close(master)
    assert done.returncode == 2
    assert done.stdout == b""  # no escape codes into a pipe or a file
    assert done.stderr.decode().splitlines() == [
        "gpufleet console: needs a terminal (stdin and stdout); for a one-shot view of this "
        "machine's GPUs, run: gpufleet status"]
    data = Path(os.environ["XDG_DATA_HOME"]) / "gpufleet"
    assert not data.exists()  # nothing was started

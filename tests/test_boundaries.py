"""Import boundaries: the server side never loads textual."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHECK = """
import contextlib, io, sys
from gpufleet.server.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    rc = main(["status", "--simulate", "--json"])
assert rc == 0, rc
heavy = sorted(m for m in sys.modules if m == "textual" or m.startswith("textual."))
print("LOADED:" + ",".join(heavy))
"""


def test_status_command_does_not_import_textual():
    result = subprocess.run([sys.executable, "-c", _CHECK], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "LOADED:", result.stdout


def test_gpu_layer_and_schemas_do_not_import_textual_or_duckdb():
    code = ("import sys, server.schemas, server.gpu.select, server.gpu.simulated, server.gpu.nvml;"
            "print(sorted(m for m in ('textual', 'duckdb', 'httpx') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


_SERVE_CHECK = """
import logging, os, signal, sys, threading, time
from gpufleet.server.cli import main

def stop_once_handled():
    # SIGTERM only once serve has its handler, so the graceful path runs (bounded wait)
    deadline = time.monotonic() + 30
    while signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGTERM)

class StopWhenServing(logging.Handler):
    def emit(self, record):
        if record.getMessage().startswith("gpufleet serving"):
            threading.Thread(target=stop_once_handled, daemon=True).start()

logging.getLogger("gpufleet").addHandler(StopWhenServing())
rc = main(["serve", "--port", "0", "--db", sys.argv[1], "--no-sampler", "--simulate"])
assert rc == 0, rc
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("textual", "console"))
print("LOADED:" + ",".join(heavy))
"""


def test_serve_command_does_not_import_textual_or_the_console(tmp_path: Path):
    result = subprocess.run([sys.executable, "-c", _SERVE_CHECK, str(tmp_path / "s.duckdb")],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "LOADED:", result.stdout
    assert "gpufleet serving" in result.stderr

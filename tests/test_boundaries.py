"""Import boundaries: the server side never loads textual."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHECK = """
import contextlib, io, sys
from server.cli import main
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

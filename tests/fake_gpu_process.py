"""Test support: run a gpufleet process on a machine with one (fake) GPU.

The fake pynvml comes first on the child's PYTHONPATH and a ``sitecustomize`` beside
it describes the GPU, so the real command line (``python -m gpufleet.server.cli ...``)
runs unchanged, as a person would start it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FAKES = Path(__file__).resolve().parent / "fakes"
GPU_UUID = "GPU-7e57c0de-0000-1111-2222-333344445555"

_SITE = f'''import pynvml
pynvml.configure([pynvml.FakeGpu(uuid="{GPU_UUID}")])
'''


def one_gpu_pythonpath(folder: Path) -> str:
    """A PYTHONPATH (a site folder made in ``folder``, then the fakes) with one GPU present."""
    site = folder / "one-gpu-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_SITE)
    return os.pathsep.join([str(site), str(FAKES)])


def agent_once(url: str, key: str, spool: Path, home: Path, *, simulate: bool = False
               ) -> subprocess.CompletedProcess[str]:
    """``gpufleet agent --once`` on the one-GPU machine (``--simulate`` on request), as a person runs it."""
    env = {"GPUFLEET_KEY": key, "PATH": "/usr/bin:/bin", "HOME": str(home),
           "PYTHONPATH": one_gpu_pythonpath(home),
           **{k: v for k, v in os.environ.items() if k.startswith("XDG_")}}
    return subprocess.run(
        [sys.executable, "-m", "gpufleet.server.cli", "agent", "--server", url, "--once",
         "--spool-dir", str(spool), *(["--simulate"] if simulate else [])],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60)

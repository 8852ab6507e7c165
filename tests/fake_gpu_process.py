"""Test support: run a gpufleet process on a machine with one (fake) GPU.

The fake pynvml comes first on the child's PYTHONPATH and a ``sitecustomize`` beside
it describes the GPU, so the real command line (``python -m gpufleet.server.cli ...``)
runs unchanged, as a person would start it.
"""

from __future__ import annotations

import os
from pathlib import Path

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

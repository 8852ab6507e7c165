"""Every test runs with its own config, data and state dirs and no GPUFLEET_* variables.

platformdirs reads XDG_* on Linux, so a test can never touch the user's real
config file, DuckDB store, discovery file or agent spool.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("home")
    for var, sub in (
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_DATA_HOME", "data"),
        ("XDG_STATE_HOME", "state"),
        ("XDG_CACHE_HOME", "cache"),
    ):
        path = home / sub
        path.mkdir()
        monkeypatch.setenv(var, str(path))
    for name in list(os.environ):
        if name.startswith("GPUFLEET_"):
            monkeypatch.delenv(name)
    return home

"""The console's start-up: the local server starts on a thread while the UI imports."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gpufleet.console.embedded import server_answers
from gpufleet.console.startup import UI_MODULE, connect_while_importing
from tests.test_console_data_embedded import console_settings


def test_the_server_starts_while_the_ui_imports(tmp_path: Path, refused_url: str) -> None:
    # A machine with a GPU: no demo fleet and no sample month, just the local server.
    connections = connect_while_importing(console_settings(tmp_path, refused_url), directory=tmp_path / "data",
                                          gpu_present=True, demo_nodes=0)
    try:
        assert UI_MODULE in sys.modules
        assert connections.origin == "embedded" and server_answers(connections.local_url)
        assert connections.sample_ready.is_set() and not connections.nodes
    finally:
        connections.stop()


def test_a_failed_start_is_raised_in_the_caller(tmp_path: Path, refused_url: str) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    settings = console_settings(tmp_path, refused_url).with_overrides(
        {"server.db_path": str(blocker / "console.duckdb"), "server.simulated_db_path": str(blocker / "demo.duckdb")})
    with pytest.raises(OSError):
        connect_while_importing(settings, directory=tmp_path / "data", gpu_present=False, demo_nodes=0)

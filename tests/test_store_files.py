"""The store's files are owner-only from their first byte: data folder 0700, store and WAL 0600."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from gpufleet.server.store import MetricsStore
from gpufleet.server.store import store as store_module


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_new_data_folders_are_owner_only(tmp_path: Path, permissive_umask: None) -> None:
    db = tmp_path / "data" / "gpufleet" / "gpufleet.duckdb"
    MetricsStore.open(db).close()
    assert mode(tmp_path / "data") == 0o700
    assert mode(tmp_path / "data" / "gpufleet") == 0o700
    assert mode(db) == 0o600


def test_an_existing_folder_keeps_its_mode(tmp_path: Path, permissive_umask: None) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    from gpufleet.server.files import make_private_dir

    make_private_dir(shared)
    assert mode(shared) == 0o755


def test_the_store_file_is_never_created_readable_by_others(tmp_path: Path, permissive_umask: None,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, int] = {}
    real_connect = duckdb.connect

    def connect(database: str, *args: object, **kwargs: object) -> duckdb.DuckDBPyConnection:
        con = real_connect(database, *args, **kwargs)
        seen["file"] = mode(Path(database))  # before anything could chmod it
        seen["umask"] = os.umask(0o022)
        return con

    monkeypatch.setattr(store_module.duckdb, "connect", connect)
    MetricsStore.open(tmp_path / "s.duckdb").close()
    assert seen == {"file": 0o600, "umask": 0o077}
    current = os.umask(0o022)
    assert current == 0o022  # restored after the connect


def test_the_write_ahead_log_is_owner_only(tmp_path: Path, permissive_umask: None) -> None:
    db = tmp_path / "s.duckdb"
    store = MetricsStore.open(db)
    try:
        wal = tmp_path / "s.duckdb.wal"
        assert wal.exists()  # the migrations are in the log, not yet checkpointed
        assert mode(wal) == 0o600
    finally:
        store.close()


def test_a_store_from_before_is_narrowed(tmp_path: Path, permissive_umask: None) -> None:
    db = tmp_path / "s.duckdb"
    MetricsStore.open(db).close()
    db.chmod(0o644)
    MetricsStore.open(db).close()
    assert mode(db) == 0o600


def test_an_open_folder_is_warned_about(tmp_path: Path, permissive_umask: None,
                                        caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "open"
    folder.mkdir(mode=0o755)
    with caplog.at_level(logging.WARNING, logger="gpufleet.store"):
        MetricsStore.open(folder / "s.duckdb").close()
    assert "chmod 700" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gpufleet.store"):
        MetricsStore.open(tmp_path / "private" / "s.duckdb").close()
    assert caplog.text == ""

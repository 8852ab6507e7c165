"""The key cache never outlives a revocation or rotation that raced a lookup."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gpufleet.server.store import MetricsStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MetricsStore]:
    s = MetricsStore.open(tmp_path / "gpufleet.duckdb")
    yield s
    s.close()


def _run_after_next_read(store: MetricsStore, action: Callable[[], object]) -> None:
    """Run ``action`` right after the key store's next read, before its result is cached."""
    real = store.keys._cursor
    pending = [action]

    @contextlib.contextmanager
    def cursor() -> Iterator[object]:
        with real() as cur:
            yield cur
        if pending:  # the row was read while the key was active; now it changes
            pending.pop()()

    store.keys._cursor = cursor


def test_revocation_racing_a_lookup_is_not_undone_by_the_cache(store: MetricsStore) -> None:
    created = store.create_key("agent", ["ingest"], "acme")
    _run_after_next_read(store, lambda: store.revoke_key(created.info.id))
    # The racing lookup read the key before the revocation committed: it may answer once...
    assert store.authenticate(created.key) is not None
    # ...but must not have cached that answer past the revocation.
    assert store.authenticate(created.key) is None
    assert store.authenticate(created.key) is None


def test_rotation_racing_a_lookup_stops_the_old_secret(store: MetricsStore) -> None:
    created = store.create_key("agent", ["ingest"], "acme")
    rotated: list[str] = []
    _run_after_next_read(store, lambda: rotated.append(store.rotate_key(created.info.id).key))
    store.authenticate(created.key)
    assert store.authenticate(created.key) is None
    assert store.authenticate(rotated[0]).name == "agent"


def test_every_invalidation_bumps_the_generation(store: MetricsStore) -> None:
    first = store.create_key("a", ["read"], "acme")
    before = store.keys.generation
    store.rotate_key(first.info.id)
    store.revoke_key("a", "acme")
    assert store.keys.generation == before + 2


def test_lookups_without_a_race_are_still_cached(store: MetricsStore) -> None:
    created = store.create_key("agent", ["ingest"], "acme")
    assert store.authenticate(created.key) is not None
    reads = []
    real = store.keys._cursor

    @contextlib.contextmanager
    def counting() -> Iterator[object]:
        reads.append(1)
        with real() as cur:
            yield cur

    store.keys._cursor = counting
    assert store.authenticate(created.key) is not None
    assert reads == []

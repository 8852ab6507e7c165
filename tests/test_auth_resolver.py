"""StoreKeyResolver's cache never keeps an answer that a racing revocation or rotation made stale."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gpufleet.server.auth import StoreKeyResolver
from gpufleet.server.schemas import KeyInfo
from gpufleet.server.store import MetricsStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MetricsStore]:
    s = MetricsStore.open(tmp_path / "gpufleet.duckdb")
    yield s
    s.close()


def _count_lookups(store: MetricsStore, after_first: Callable[[KeyInfo | None], None] | None = None
                   ) -> list[str]:
    """Wrap ``store.authenticate``: record each lookup; run ``after_first`` after the first read."""
    real = store.authenticate
    calls: list[str] = []

    def lookup(secret: str) -> KeyInfo | None:
        info = real(secret)
        calls.append(secret)
        if after_first is not None and len(calls) == 1:
            after_first(info)  # the key changes after it was read, before the answer is cached
        return info

    store.authenticate = lookup  # type: ignore[method-assign]
    return calls


def _on_loop(loop: asyncio.AbstractEventLoop, action: Callable[[], None]) -> None:
    """Run ``action`` on the event loop (where routes call ``forget``) and wait for it."""
    async def run() -> None:
        action()
    asyncio.run_coroutine_threadsafe(run(), loop).result(timeout=10)


async def test_a_revocation_racing_a_lookup_is_not_cached(store: MetricsStore) -> None:
    created = store.create_key("agent", ["ingest"], "acme")
    resolver = StoreKeyResolver(store, ttl_s=3600.0)
    loop = asyncio.get_running_loop()

    def revoke(info: KeyInfo | None) -> None:
        revoked = store.revoke_key(created.info.id)
        _on_loop(loop, lambda: resolver.forget(revoked))

    calls = _count_lookups(store, revoke)
    raced = await resolver.resolve(created.key)
    assert raced is not None and raced.id == created.info.id  # read before the revocation
    assert resolver.generation == 1
    # The stale answer was not cached: the next lookup asks the store and is refused.
    assert await resolver.resolve(created.key) is None
    assert len(calls) == 2
    assert not resolver.recognizes(created.key)


async def test_a_rotation_racing_a_lookup_stops_the_old_secret(store: MetricsStore) -> None:
    created = store.create_key("agent", ["ingest"], "acme")
    resolver = StoreKeyResolver(store, ttl_s=3600.0)
    loop = asyncio.get_running_loop()
    new_secret: list[str] = []

    def rotate(info: KeyInfo | None) -> None:
        new_secret.append(store.rotate_key(created.info.id).key)
        assert info is not None
        _on_loop(loop, lambda: resolver.forget(info))

    _count_lookups(store, rotate)
    assert await resolver.resolve(created.key) is not None
    assert await resolver.resolve(created.key) is None
    fresh = await resolver.resolve(new_secret[0])
    assert fresh is not None and fresh.name == "agent"


async def test_lookups_without_a_race_are_cached(store: MetricsStore) -> None:
    created = store.create_key("agent", ["ingest"], "acme")
    resolver = StoreKeyResolver(store, ttl_s=3600.0)
    calls = _count_lookups(store)
    for _ in range(3):
        info = await resolver.resolve(created.key)
        assert info is not None and info.id == created.info.id
    assert len(calls) == 1
    assert resolver.recognizes(created.key)

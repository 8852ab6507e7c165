"""Test support for the API tests: a real ServerApp on 127.0.0.1:0 and keys of every kind."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from gpufleet.server.app import ServerApp
from gpufleet.server.auth import KeyResolver, StaticKeyResolver
from gpufleet.server.config import Settings
from gpufleet.server.gpu.simulated import SimulatedBackend

OPERATOR_TOKEN = "gpf_test_operator_token_0123456789"


def api_settings(**overrides: Any) -> Settings:
    """Defaults tuned for tests: no background sampler, a short purge settle bound."""
    base = {"sampler.enabled": False, "server.purge_settle_s": 0.5}
    base.update(overrides)
    return Settings().with_overrides(base)


@dataclass
class Running:
    app: ServerApp
    http: httpx.AsyncClient
    keys: dict[str, str] = field(default_factory=dict)  # role -> secret

    @property
    def url(self) -> str:
        return self.app.url

    def auth(self, role: str, *, header: str = "bearer") -> dict[str, str]:
        secret = self.keys[role]
        if header == "bearer":
            return {"Authorization": f"Bearer {secret}"}
        return {"X-API-Key": secret}


@contextlib.asynccontextmanager
async def running_app(settings: Settings | None = None, *, backend: Any = None,
                      store: Any = None, resolver: KeyResolver | None = None,
                      keys: dict[str, str] | None = None, purge: Any = None,
                      clock: Callable[[], datetime] | None = None) -> AsyncIterator[Running]:
    settings = settings or api_settings()
    backend = backend or SimulatedBackend()
    if store is None and resolver is None:
        resolver = StaticKeyResolver.operator(OPERATOR_TOKEN)
        keys = {"operator": OPERATOR_TOKEN, **(keys or {})}
    app = ServerApp(settings, backend=backend, store=store, key_resolver=resolver, purge=purge,
                    **({"clock": clock} if clock is not None else {}))
    await app.start("127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=app.url, timeout=10.0) as http:
            yield Running(app=app, http=http, keys=dict(keys or {}))
    finally:
        await app.stop()


KEY_ROLES: dict[str, tuple[list[str], str]] = {
    # role -> (scopes, account)
    "operator": (["operator"], "default"),
    "ingest": (["ingest"], "default"),
    "read": (["read"], "default"),
    "ingest_read": (["ingest", "read"], "default"),
    "other": (["ingest", "read"], "acme"),
}


@contextlib.asynccontextmanager
async def store_app(db_path: Any, settings: Settings | None = None, *,
                    clock: Callable[[], datetime] | None = None,
                    backend: Any = None) -> AsyncIterator[Running]:
    """A server over a real DuckDB file with one key per role in ``KEY_ROLES``."""
    from gpufleet.server.store import MetricsStore

    store = MetricsStore.open(db_path)
    try:
        keys = {role: store.create_key(f"{role}-key", scopes, account).key
                for role, (scopes, account) in KEY_ROLES.items()}
        async with running_app(settings, store=store, keys=keys, clock=clock,
                               backend=backend) as srv:
            yield srv
    finally:
        store.close()

"""The auth matrix on every route, both key headers, and key rotation; real store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from gpufleet.server.client import AsyncGpuFleetClient, Unauthorized
from tests.api_server import store_app

TS = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
SAMPLE = {"timestamp": TS, "gpu_index": 0, "gpu_uuid": "GPU-1", "power_draw_w": 100,
          "utilization_gpu_pct": 10, "utilization_memory_pct": 10, "temperature_c": 40,
          "memory_used_mb": 10}
TODAY = datetime.now(UTC).date().isoformat()

# (method, path, request kwargs, the scope family that may call it)
ROUTES: list[tuple[str, str, dict[str, Any], str]] = [
    ("GET", "/v1/gpu/status", {}, "operator"),
    ("GET", "/v1/gpu/memory", {}, "operator"),
    ("POST", "/v1/gpu/purge", {"json": {"force": False}}, "operator"),
    ("POST", "/v1/metrics/ingest", {"json": [SAMPLE]}, "ingest"),
    ("POST", "/v1/agent/heartbeat",
     {"json": {"agent_version": "0.2.0", "gpu_count": 4, "hostname": "gpu-node-01"}}, "ingest"),
    ("GET", "/v1/chargeback/report", {"params": {"from": TODAY, "to": TODAY}}, "read"),
    ("GET", "/v1/agent/hosts", {}, "read"),
]
# role -> the scope families it may use
ALLOWED = {"operator": {"operator", "ingest", "read"}, "ingest": {"ingest"}, "read": {"read"},
           "ingest_read": {"ingest", "read"}}


async def _call(http: httpx.AsyncClient, method: str, path: str, kwargs: dict[str, Any],
                headers: dict[str, str]) -> httpx.Response:
    return await http.request(method, path, headers=headers, **kwargs)


async def test_auth_matrix_on_every_route(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        for method, path, kwargs, family in ROUTES:
            none = await _call(srv.http, method, path, kwargs, {})
            assert none.status_code == 401, (path, none.text)
            assert none.json() == {"error": "Missing or invalid API key"}
            assert none.headers["www-authenticate"].startswith("Bearer")
            unknown = await _call(srv.http, method, path, kwargs,
                                  {"X-API-Key": "gpf_not_a_real_key"})
            assert unknown.status_code == 401, path
            for role, families in ALLOWED.items():
                for header in ("bearer", "x-api-key"):
                    response = await _call(srv.http, method, path, kwargs,
                                           srv.auth(role, header=header))
                    want = 200 if family in families else 403
                    assert response.status_code == want, (path, role, header, response.text)
                    if want == 403:
                        assert "requires" in response.json()["error"]


async def test_public_routes_need_no_key(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        assert (await srv.http.get("/v1/metrics/ingest")).status_code == 200
        assert (await srv.http.get("/v1/openapi.json")).status_code == 200


async def test_operator_only_message(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        response = await srv.http.get("/v1/gpu/status", headers=srv.auth("ingest_read"))
        assert response.json() == {"error": "This endpoint requires an operator-scoped key"}


async def test_rotation_replaces_the_key_at_once(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        old = srv.keys["ingest"]
        headers = {"X-API-Key": old}
        assert (await srv.http.post("/v1/metrics/ingest", json=[SAMPLE],
                                    headers=headers)).status_code == 200
        async with AsyncGpuFleetClient(srv.url, api_key=old) as client:
            created = await client.rotate_key()
        assert created.key != old
        assert created.info.name == "ingest-key" and created.info.scopes == ["ingest"]
        stale = await srv.http.post("/v1/metrics/ingest", json=[SAMPLE], headers=headers)
        assert stale.status_code == 401
        fresh = await srv.http.post("/v1/metrics/ingest", json=[SAMPLE],
                                    headers={"Authorization": f"Bearer {created.key}"})
        assert fresh.status_code == 200
        assert fresh.json()["duplicates"] == 1
        async with AsyncGpuFleetClient(srv.url, api_key=old) as client:
            try:
                await client.rotate_key()
            except Unauthorized as exc:
                assert exc.status == 401
            else:
                raise AssertionError("the old key rotated again")


async def test_rotation_needs_a_valid_key(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        assert (await srv.http.post("/v1/keys/rotate")).status_code == 401
        read = await srv.http.post("/v1/keys/rotate", headers=srv.auth("read"))
        assert read.status_code == 200
        assert read.json()["info"]["scopes"] == ["read"]
        assert "key" in read.json()


async def test_a_response_carrying_a_new_secret_is_never_cached(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        rotated = await srv.http.post("/v1/keys/rotate", headers=srv.auth("read"))
        assert rotated.status_code == 200 and rotated.json()["key"].startswith("gf_")
        assert rotated.headers["cache-control"] == "no-store"
        assert rotated.headers["pragma"] == "no-cache"


async def test_a_rotation_past_its_deadline_still_hands_over_the_new_key(tmp_path: Path,
                                                                         monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    import threading

    from tests.api_server import api_settings

    # Long enough for the guard's own key lookup; the rotation below is held past it.
    settings = api_settings(**{"limits.handler_timeout_s": 1.0})
    async with store_app(tmp_path / "db.duckdb", settings) as srv:
        store = srv.app.store
        real_rotate = store.rotate_key
        release, committed = threading.Event(), threading.Event()

        def slow_rotate(key_id: str, account: str | None = None, **kwargs: Any) -> Any:
            release.wait(10)  # held until the handler's deadline has fired
            try:
                return real_rotate(key_id, account, **kwargs)
            finally:
                committed.set()

        monkeypatch.setattr(store, "rotate_key", slow_rotate)
        old = srv.keys["ingest"]
        call = asyncio.ensure_future(srv.http.post("/v1/keys/rotate", headers={"X-API-Key": old}))

        def deadline_fired() -> bool:
            return call.done() or any(t.cancelling() for t in asyncio.all_tasks())

        for _ in range(1000):  # bounded poll: the deadline is 1 s
            if deadline_fired():
                break
            await asyncio.sleep(0.01)
        assert deadline_fired()
        release.set()
        response = await call
        assert await asyncio.to_thread(committed.wait, 10)
        # Never locked out: the rotation committed, so the caller must hold the new secret.
        assert response.status_code == 200, response.text
        new = response.json()["key"]
        stale = await srv.http.post("/v1/metrics/ingest", json=[SAMPLE], headers={"X-API-Key": old})
        assert stale.status_code == 401
        info = await asyncio.to_thread(store.authenticate, new)
        assert info is not None and info.name == "ingest-key" and info.revoked_at is None


async def test_two_rotations_with_one_secret_give_one_new_secret_and_a_401(
        tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A retried or doubled rotation must not hand out a secret that the other one replaced."""
    import threading

    async with store_app(tmp_path / "db.duckdb") as srv:
        store = srv.app.store
        real_rotate = store.rotate_key
        both_in = threading.Barrier(2, timeout=10)

        def rotate_together(*args: Any, **kwargs: Any) -> Any:
            both_in.wait()  # both requests authenticated with the old secret before either commits
            return real_rotate(*args, **kwargs)

        monkeypatch.setattr(store, "rotate_key", rotate_together)
        old = {"X-API-Key": srv.keys["ingest"]}
        answers = await asyncio.gather(srv.http.post("/v1/keys/rotate", headers=old),
                                       srv.http.post("/v1/keys/rotate", headers=old))
        assert sorted(a.status_code for a in answers) == [200, 401], [a.text for a in answers]
        refused = next(a for a in answers if a.status_code == 401)
        assert refused.json() == {"error": "Missing or invalid API key"}
        new = next(a for a in answers if a.status_code == 200).json()["key"]
        fresh = await srv.http.post("/v1/metrics/ingest", json=[SAMPLE], headers={"X-API-Key": new})
        assert fresh.status_code == 200, fresh.text
        rotations = {k.name: len(k.rotations) for k in store.list_keys()}
        assert rotations["ingest-key"] == 1


async def test_a_secret_rotated_elsewhere_cannot_rotate_the_key_back(tmp_path: Path) -> None:
    """A secret still in the server's key cache after `gpufleet keys rotate` elsewhere is stale."""
    from gpufleet.server.auth import StoreKeyResolver
    from gpufleet.server.store import MetricsStore
    from tests.api_server import running_app

    with MetricsStore.open(tmp_path / "db.duckdb") as store:
        created = store.create_key("agents", ["ingest", "read"], "default")
        # a cache that outlives the test, so the stale secret is surely still cached
        resolver = StoreKeyResolver(store, ttl_s=3600)
        async with running_app(store=store, resolver=resolver) as srv:
            old = {"X-API-Key": created.key}
            assert (await srv.http.get("/v1/agent/hosts", headers=old)).status_code == 200
            elsewhere = await asyncio.to_thread(store.rotate_key, created.info.id)  # not via this server
            again = await srv.http.post("/v1/keys/rotate", headers=old)
            assert again.status_code == 401, again.text
            hosts = await srv.http.get("/v1/agent/hosts", headers={"X-API-Key": elsewhere.key})
            assert hosts.status_code == 200
            assert store.authenticate(elsewhere.key) is not None

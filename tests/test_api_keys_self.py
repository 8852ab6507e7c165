"""``GET /v1/keys/self``: which key a secret is, the same id and account across rotations."""

from __future__ import annotations

from pathlib import Path

from gpufleet.server.client import AsyncGpuFleetClient
from tests.api_server import api_settings, store_app


async def test_a_key_says_which_key_it_is_and_stays_that_key_across_rotations(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        old = srv.keys["other"]
        before = await srv.http.get("/v1/keys/self", headers={"X-API-Key": old})
        assert before.status_code == 200
        body = before.json()
        assert (body["name"], body["account"], body["scopes"]) == ("other-key", "acme", ["ingest", "read"])
        assert old not in before.text and body["rotations"] == []
        async with AsyncGpuFleetClient(srv.url, api_key=old) as client:
            new = (await client.rotate_key()).key
        async with AsyncGpuFleetClient(srv.url, api_key=new) as client:
            after = await client.own_key()
        assert (after.id, after.account, after.name) == (body["id"], "acme", "other-key")
        assert len(after.rotations) == 1 and after.rotations[0].old_prefix == body["prefix"]
        assert after.prefix == new[:8] != body["prefix"]
        stale = await srv.http.get("/v1/keys/self", headers={"X-API-Key": old})
        assert stale.status_code == 401 and "error" in stale.json()


async def test_every_scope_may_ask_and_no_key_or_a_revoked_one_may_not(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        for role in ("operator", "ingest", "read"):
            answer = await srv.http.get("/v1/keys/self", headers=srv.auth(role))
            assert answer.status_code == 200 and answer.json()["name"] == f"{role}-key"
        assert (await srv.http.get("/v1/keys/self")).status_code == 401
        # revoked by another process (`gpufleet keys revoke`): the resolver's cache still
        # holds the key for a moment, the answer is read from the store
        srv.app.store.revoke_key("read-key", "default")
        revoked = await srv.http.get("/v1/keys/self", headers=srv.auth("read"))
        assert revoked.status_code == 401


async def test_it_is_rate_limited_per_key_and_in_the_openapi_document(tmp_path: Path) -> None:
    settings = api_settings(**{"rate_limits.key_self": {"requests": 2, "per_s": 3600}})
    async with store_app(tmp_path / "db.duckdb", settings) as srv:
        answers = [await srv.http.get("/v1/keys/self", headers=srv.auth("ingest")) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert answers[0].headers["x-ratelimit-limit"] == "2"
        assert "retry-after" in answers[2].headers
        # another key has its own bucket
        assert (await srv.http.get("/v1/keys/self", headers=srv.auth("read"))).status_code == 200
        document = (await srv.http.get("/v1/openapi.json")).json()
    op = document["paths"]["/v1/keys/self"]["get"]
    assert op["operationId"] == "getOwnKey"
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/KeyInfo")
    assert {"401", "429"} <= set(op["responses"])
    assert "X-RateLimit-Limit" in op["responses"]["200"]["headers"]

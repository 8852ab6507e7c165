"""One client cannot starve the others: per-address caps, silent connections, proxies, guessing.

Different clients are played by different loopback source addresses (127.0.0.2, .3 ...).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest

from tests.api_server import api_settings, store_app
from tests.test_http_limits import assert_error, wait_for_connections
from tests.test_http_server import FAST, running_server


async def _connect_from(address: str, server_address: tuple[str, int]
                        ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*server_address, local_addr=(address, 0))


def _client_from(address: str, url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=10,
                             transport=httpx.AsyncHTTPTransport(local_address=address))


async def test_one_address_holding_idle_connections_cannot_starve_another() -> None:
    limits = FAST.model_copy(update={"max_connections": 50, "max_connections_per_address": 8})
    async with running_server(limits) as server:
        assert server.address is not None
        greedy = [await _connect_from("127.0.0.2", server.address) for _ in range(8)]
        await wait_for_connections(server, 8)
        # the greedy address's next connections are refused at once, not held
        for _ in range(30):
            reader, writer = await _connect_from("127.0.0.2", server.address)
            async with asyncio.timeout(10):
                assert_error(await reader.read(-1), 503, "too many connections from your address")
            writer.close()
        assert server.open_connections == 8
        # a normal client from another address gets every answer
        async with _client_from("127.0.0.3", server.url) as client:
            codes = [(await client.get("/hello")).status_code for _ in range(20)]
        assert codes == [200] * 20
        for _, writer in greedy:
            writer.close()


async def test_a_trusted_proxy_is_not_capped_per_address() -> None:
    from gpufleet.server.http.forwarded import ClientAddresses, parse_networks

    limits = FAST.model_copy(update={"max_connections": 50, "max_connections_per_address": 2})
    proxy = ClientAddresses(parse_networks(["127.0.0.4/32"]))
    async with running_server(limits, addresses=proxy) as server:
        assert server.address is not None
        held = [await _connect_from("127.0.0.4", server.address) for _ in range(6)]
        await wait_for_connections(server, 6)  # every client behind it shares its address
        for _, writer in held:
            writer.close()


async def test_a_connection_that_sends_nothing_gets_the_header_timeout_not_keep_alive() -> None:
    limits = FAST.model_copy(update={"header_timeout_s": 0.2, "keepalive_timeout_s": 600.0})
    async with running_server(limits) as server:
        assert server.address is not None
        reader, writer = await asyncio.open_connection(*server.address)
        async with asyncio.timeout(30):  # far below keep-alive: only the header timeout closes it
            assert await reader.read(-1) == b""  # closed silently: there was no request to answer
        writer.close()
        await wait_for_connections(server, 0)


async def test_x_forwarded_for_is_believed_only_from_trusted_proxies(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = api_settings(**{"server.trusted_proxies": ["127.0.0.5"],
                               "rate_limits.failed_auth": {"requests": 2, "per_s": 3600}})
    async with store_app(tmp_path / "db.duckdb", settings) as srv, \
            _client_from("127.0.0.5", srv.url) as proxy, _client_from("127.0.0.6", srv.url) as direct:
        with caplog.at_level(logging.INFO, logger="gpufleet.access"):
            behind = {"X-Forwarded-For": "198.51.100.9, 203.0.113.7"}
            codes = [(await proxy.get("/v1/gpu/status", headers={**behind, "X-API-Key": f"gf_x{i}"}))
                     .status_code for i in range(3)]
            assert codes == [401, 401, 429]  # 203.0.113.7's bucket, not the proxy's
            other = {"X-Forwarded-For": "203.0.113.8", "X-API-Key": "gf_y"}
            assert (await proxy.get("/v1/gpu/status", headers=other)).status_code == 401
            # a client talking directly cannot choose its address by writing the header
            spoof = {"X-Forwarded-For": "192.0.2.1", "X-API-Key": "gf_z"}
            assert [(await direct.get("/v1/gpu/status", headers=spoof)).status_code
                    for _ in range(3)] == [401, 401, 429]
            await proxy.get("/healthz", headers={"X-Forwarded-For": "x GET /admin 200"})
    lines = [r.getMessage() for r in caplog.records if r.name == "gpufleet.access"]
    assert lines[0].startswith("203.0.113.7 GET /v1/gpu/status 401 ")
    assert lines[3].startswith("203.0.113.8 GET ")
    assert all(line.startswith("127.0.0.6 GET ") for line in lines[4:7])
    assert lines[7].startswith("127.0.0.5 GET /healthz 200 ")  # garbage: the proxy itself


async def test_guessing_is_slowed_but_a_key_that_verifies_is_never_refused(tmp_path: Path) -> None:
    settings = api_settings(**{"rate_limits.failed_auth": {"requests": 30, "per_s": 3600}})
    async with store_app(tmp_path / "db.duckdb", settings) as srv, \
            _client_from("127.0.0.7", srv.url) as client:
        codes = [(await client.get("/v1/agent/hosts", headers={"X-API-Key": f"gf_guess{i}"}))
                 .status_code for i in range(31)]
        assert codes == [401] * 30 + [429]
        # valid keys never seen from this address (a new agent behind the same NAT) are served
        for role in ("read", "ingest_read", "operator"):
            assert (await client.get("/v1/agent/hosts", headers=srv.auth(role))).status_code == 200
        refused = await client.get("/v1/agent/hosts", headers={"X-API-Key": "gf_guess_again"})
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1

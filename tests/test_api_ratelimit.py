"""Rate limits: token buckets, X-RateLimit-* on every response of limited routes, 429."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gpufleet.server.client import AsyncGpuFleetClient, RateLimited
from gpufleet.server.config import RateLimit, RateLimits
from gpufleet.server.ratelimit import RateLimiter, window_text
from tests.api_server import api_settings, store_app

TS = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
SAMPLE = {"timestamp": TS, "gpu_index": 0, "gpu_uuid": "GPU-1", "power_draw_w": 100,
          "utilization_gpu_pct": 10, "utilization_memory_pct": 10, "temperature_c": 40,
          "memory_used_mb": 10}
RATE_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


class ManualClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_bucket_refills_continuously() -> None:
    clock = ManualClock()
    limiter = RateLimiter(RateLimits(ingest=RateLimit(requests=3, per_s=60)), clock=clock,
                          wall_clock=lambda: 5_000.0)
    decisions = [limiter.take("k", "ingest") for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert decisions[3].retry_after_s == pytest.approx(20.0)
    assert decisions[2].reset_at == pytest.approx(5_000 + 60.0)
    clock.t += 20.0
    assert limiter.take("k", "ingest").allowed
    assert not limiter.take("k", "ingest").allowed
    assert limiter.take("another-key", "ingest").allowed  # buckets are per key


def test_window_text() -> None:
    assert window_text(60) == "per minute"
    assert window_text(3600) == "per hour"
    assert window_text(90) == "per 90 s"


def _small_limits() -> dict[str, object]:
    return {"rate_limits.ingest": {"requests": 3, "per_s": 60},
            "rate_limits.chargeback": {"requests": 2, "per_s": 60},
            "rate_limits.hosts": {"requests": 2, "per_s": 60},
            "rate_limits.heartbeat": {"requests": 2, "per_s": 60},
            "rate_limits.key_rotation": {"requests": 1, "per_s": 3600}}


async def test_headers_on_every_response_and_429_with_retry_after(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb", api_settings(**_small_limits())) as srv:
        headers = srv.auth("ingest", header="x-api-key")
        ok = await srv.http.post("/v1/metrics/ingest", json=[SAMPLE], headers=headers)
        bad = await srv.http.post("/v1/metrics/ingest", json=[{"x": 1}], headers=headers)
        forbidden = await srv.http.get("/v1/agent/hosts", headers=headers)
        last = await srv.http.post("/v1/metrics/ingest", json=[SAMPLE], headers=headers)
        refused = await srv.http.post("/v1/metrics/ingest", json=[SAMPLE], headers=headers)
        assert [r.status_code for r in (ok, bad, forbidden, last, refused)] == \
            [200, 400, 403, 200, 429]
        for response in (ok, bad, forbidden, last, refused):
            assert all(name in response.headers for name in RATE_HEADERS), response.headers
        assert ok.headers["x-ratelimit-limit"] == "3"
        assert [r.headers["x-ratelimit-remaining"] for r in (ok, bad, last, refused)] == \
            ["2", "1", "0", "0"]
        reset = int(refused.headers["x-ratelimit-reset"])
        assert time.time() < reset <= math.ceil(time.time()) + 61
        retry_after = int(refused.headers["retry-after"])
        assert 1 <= retry_after <= 20
        assert refused.json() == {"error": "Rate limit exceeded: 3 requests per minute. "
                                           f"Retry after {retry_after} s"}
        # another key of the same account has its own bucket
        other = await srv.http.post("/v1/metrics/ingest", json=[SAMPLE],
                                    headers=srv.auth("ingest_read"))
        assert other.status_code == 200


async def test_unauthenticated_requests_are_limited_by_address(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb", api_settings(**_small_limits())) as srv:
        statuses = []
        for _ in range(4):
            response = await srv.http.post("/v1/metrics/ingest", json=[SAMPLE],
                                           headers={"X-API-Key": "gpf_guess"})
            assert "x-ratelimit-remaining" in response.headers
            statuses.append(response.status_code)
        assert statuses == [401, 401, 401, 429]


async def test_every_limited_route_refuses_past_its_limit(tmp_path: Path) -> None:
    day = datetime.now(UTC).date().isoformat()
    async with store_app(tmp_path / "db.duckdb", api_settings(**_small_limits())) as srv:
        read = srv.auth("operator")
        for path, params in (("/v1/chargeback/report", {"from": day, "to": day}),
                             ("/v1/agent/hosts", None)):
            codes = [(await srv.http.get(path, params=params, headers=read)).status_code
                     for _ in range(3)]
            assert codes == [200, 200, 429], path
        hb = {"agent_version": "1", "gpu_count": 1, "hostname": "h"}
        codes = [(await srv.http.post("/v1/agent/heartbeat", json=hb, headers=read)).status_code
                 for _ in range(3)]
        assert codes == [200, 200, 429]
        first = await srv.http.post("/v1/keys/rotate", headers=srv.auth("read"))
        assert first.status_code == 200
        # the rotated key keeps its bucket: rotating again does not reset the hourly limit
        again = await srv.http.post("/v1/keys/rotate",
                                    headers={"X-API-Key": first.json()["key"]})
        assert again.status_code == 429
        assert again.json()["error"].startswith("Rate limit exceeded: 1 requests per hour.")


async def test_gpu_routes_carry_no_rate_headers(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        response = await srv.http.get("/v1/gpu/memory", headers=srv.auth("operator"))
        assert "x-ratelimit-limit" not in response.headers


async def test_sdk_rate_limited_error_has_retry_after(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb", api_settings(**_small_limits())) as srv, \
            AsyncGpuFleetClient(srv.url, api_key=srv.keys["ingest"]) as client:
        for _ in range(3):
            await client.ingest([SAMPLE])
        with pytest.raises(RateLimited) as caught:
            await client.ingest([SAMPLE])
        assert caught.value.status == 429
        assert caught.value.retry_after is not None and caught.value.retry_after >= 1
        assert caught.value.message.startswith("Rate limit exceeded")


async def test_bad_keys_are_limited_per_address_on_unlimited_routes_too(tmp_path: Path,
                                                                        monkeypatch) -> None:  # type: ignore[no-untyped-def]
    settings = api_settings(**{"rate_limits.failed_auth": {"requests": 3, "per_s": 3600}})
    async with store_app(tmp_path / "db.duckdb", settings) as srv:
        operator = srv.auth("operator")
        assert (await srv.http.get("/v1/gpu/status", headers=operator)).status_code == 200
        store = srv.app.store
        real_authenticate = store.authenticate
        lookups: list[str] = []

        def counting_authenticate(secret: str):  # type: ignore[no-untyped-def]
            lookups.append(secret)
            return real_authenticate(secret)

        monkeypatch.setattr(store, "authenticate", counting_authenticate)
        codes = [(await srv.http.get("/v1/gpu/status",
                                     headers={"X-API-Key": f"gpf_guess_{i}"})).status_code
                 for i in range(4)]
        assert codes == [401, 401, 401, 429]
        assert len(lookups) == 4  # still looked up: had it been valid, it would be served
        refused = await srv.http.get("/v1/gpu/memory", headers={"X-API-Key": "gpf_guess_5"})
        assert refused.status_code == 429
        retry_after = int(refused.headers["retry-after"])
        assert 1 <= retry_after <= 1200  # one token back: an hour / 3
        assert refused.json() == {"error": "Rate limit exceeded: 3 requests per hour. "
                                           f"Retry after {retry_after} s"}
        # The operator's key proved valid before: others' failures do not lock it out.
        assert (await srv.http.get("/v1/gpu/status", headers=operator)).status_code == 200
        # Nor does a valid key this address never used before (a new agent behind the same NAT).
        fresh = srv.auth("read")
        assert (await srv.http.get("/v1/agent/hosts", headers=fresh)).status_code == 200
        # No key at all is a plain 401: nothing was looked up, nothing to limit.
        assert (await srv.http.get("/v1/gpu/status")).status_code == 401


async def test_one_address_failing_never_slows_a_valid_key_from_another(tmp_path: Path) -> None:
    from gpufleet.server.api.guard import guarded
    from gpufleet.server.auth import OPERATOR, StoreKeyResolver
    from gpufleet.server.http.types import HttpError, Request, Response
    from gpufleet.server.store import MetricsStore

    async def ok(request: Request) -> Response:
        return Response.json({"ok": True})

    async def status(secret: str, address: str) -> int:
        try:
            return (await handler(request(secret, address))).status
        except HttpError as exc:  # the server maps these; here the status is what counts
            return exc.status

    def request(secret: str, address: str) -> Request:
        return Request(method="GET", target="/v1/gpu/status", path="/v1/gpu/status", query={},
                       headers={"x-api-key": secret}, client=(address, 40000))

    store = MetricsStore.open(tmp_path / "db.duckdb")
    try:
        valid = store.create_key("op", ["operator"], "default").key
        limiter = RateLimiter(RateLimits(failed_auth=RateLimit(requests=2, per_s=3600)))
        handler = guarded(ok, resolver=StoreKeyResolver(store), limiter=limiter,
                          scope=OPERATOR, limit=None)
        codes = [await status(f"gpf_bad_{i}", "10.0.0.1") for i in range(3)]
        assert codes == [401, 401, 429]
        # Another address: its never-seen valid key is looked up and served; its own
        # bad keys count against its own bucket only.
        assert await status(valid, "10.0.0.2") == 200
        assert await status("gpf_bad_x", "10.0.0.2") == 401
        assert await status("gpf_bad_y", "10.0.0.1") == 429
    finally:
        store.close()


def test_peek_takes_no_token() -> None:
    limiter = RateLimiter(RateLimits(failed_auth=RateLimit(requests=1, per_s=60)),
                          clock=ManualClock())
    assert limiter.peek("a", "failed_auth").allowed
    assert limiter.take("a", "failed_auth").allowed
    assert not limiter.peek("a", "failed_auth").allowed
    assert limiter.peek("a", "failed_auth").retry_after_s == pytest.approx(60.0)

"""Rate limits: token buckets, X-RateLimit-* on every response of limited routes, 429."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from server.client import AsyncGpuFleetClient, RateLimited
from server.config import RateLimit, RateLimits
from server.ratelimit import RateLimiter, window_text
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

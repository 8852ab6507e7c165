"""Every endpoint, attacked: generated bodies, the OpenAPI contract, bad text and deep nesting.

A real server over a real store; hypothesis and schemathesis drive it over HTTP with
bounded, derandomized example counts, so the suite's time stays fixed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gpufleet.server.config import Pricing
from tests.api_server import store_app
from tests.threaded_server import LiveServer, threaded_server

NOW = datetime.now(UTC).replace(microsecond=0)
BOUNDED = settings(max_examples=25, deadline=None, database=None, derandomize=True,
                   suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
SAMPLE = {"timestamp": (NOW - timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ"), "gpu_index": 0,
          "gpu_uuid": "GPU-abc123", "power_draw_w": 312.5, "utilization_gpu_pct": 87,
          "utilization_memory_pct": 62, "temperature_c": 71, "memory_used_mb": 51200}
STRING_FIELDS = ("gpu_uuid", "gpu_name", "job_id", "team_id", "model_tag")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with threaded_server(tmp_path_factory.mktemp("robust") / "db.duckdb") as server:
        yield server


# ------------------------------------------------------------------ generated bodies

# Text as attackers write it: lone surrogates, NUL, control characters, long runs.
wild_text = st.text(st.characters(codec=None, categories=None), max_size=40) | \
    st.sampled_from(["", "\x00", "\udfff", "GPU-\ud800", "x" * 300, "🦙", "2026-13-45T99:00:00Z"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | wild_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(wild_text, inner, max_size=4),
    max_leaves=12)
sample_values = {
    "timestamp": st.sampled_from([SAMPLE["timestamp"], "1999-12-31T23:59:59Z",
                                  (NOW + timedelta(hours=1)).isoformat()]) | wild_text,
    "gpu_index": st.integers(-5, 2**40) | json_values,
    "power_draw_w": st.floats(-10, 2000, allow_nan=False) | json_values,
    **{name: wild_text | json_values for name in STRING_FIELDS},
    "scheduler_source": st.sampled_from(["slurm", "cron", None]) | wild_text,
    "hostname": wild_text | json_values,
}
samples = st.fixed_dictionaries({}, optional=sample_values).map(lambda changes: {**SAMPLE, **changes})
ingest_bodies = st.lists(samples, min_size=0, max_size=5) | json_values


def _post(live: LiveServer, path: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    raw = json.dumps(body).encode()  # ensure_ascii: a lone surrogate goes out as \udfff
    return httpx.post(live.url + path, content=raw, timeout=10,
                      headers={"Content-Type": "application/json", **(headers or live.auth())})


def test_generated_bodies_never_get_a_server_error_on_any_endpoint(live: LiveServer) -> None:
    answered: dict[str, set[int]] = {}

    def note(path: str, response: httpx.Response) -> None:
        assert response.status_code < 500, (path, response.status_code, response.text)
        assert "error" in response.json() or response.status_code == 200
        answered.setdefault(path, set()).add(response.status_code)

    @BOUNDED
    @given(body=ingest_bodies)
    def ingest(body: Any) -> None:
        response = _post(live, "/v1/metrics/ingest", body)
        note("ingest", response)
        if response.status_code == 200:
            result = response.json()
            assert result["inserted"] + result["duplicates"] == len(body)

    @BOUNDED
    @given(body=st.fixed_dictionaries({}, optional={
        "agent_version": wild_text | json_values, "gpu_count": st.integers(-3, 5000) | json_values,
        "hostname": wild_text | json_values}).map(
            lambda changes: {"agent_version": "1.0", "gpu_count": 4, "hostname": "node-1", **changes})
        | json_values)
    def heartbeat(body: Any) -> None:
        note("heartbeat", _post(live, "/v1/agent/heartbeat", body))

    @BOUNDED
    @given(body=st.fixed_dictionaries({}, optional={
        "force": st.booleans() | json_values,
        "gpu_indices": st.lists(st.integers(-1, 9), max_size=3) | json_values}) | json_values)
    def purge(body: Any) -> None:
        note("purge", _post(live, "/v1/gpu/purge", body))

    query_value = st.binary(max_size=24) | st.sampled_from(
        [b"2026-12-01", b"2026-12-31", b"2025-12-01", b"0001-01-01", b"9999-12-31", b"csv", b"json"])

    @BOUNDED
    @given(params=st.just({b"from": b"2026-12-01", b"to": b"2026-12-31"}) | st.dictionaries(
        st.sampled_from([b"from", b"to", b"format", b"\xed\xb3\xbf"]), query_value, max_size=4))
    def report(params: dict[bytes, bytes]) -> None:
        # raw bytes, percent-encoded: invalid UTF-8 and %00 reach the server as sent
        query = "&".join(f"{quote_from_bytes(k)}={quote_from_bytes(v)}" for k, v in params.items())
        response = httpx.get(f"{live.url}/v1/chargeback/report?{query}",
                             headers=live.auth("read"), timeout=10)
        assert response.status_code < 500, response.text
        answered.setdefault("report", set()).add(response.status_code)

    @BOUNDED
    @given(body=json_values, key=wild_text.filter(lambda k: k.isprintable() and k.isascii()))
    def rotate_with_guessed_keys(body: Any, key: str) -> None:
        response = _post(live, "/v1/keys/rotate", body, {"X-API-Key": key or "-"})
        assert response.status_code in (401, 429), response.text

    for run in (ingest, heartbeat, purge, report, rotate_with_guessed_keys):
        run()
    # each endpoint both took and refused generated input
    for path in ("ingest", "heartbeat", "purge", "report"):
        assert 200 in answered[path] and 400 in answered[path], (path, answered[path])
    # whatever was accepted is stored once and the usage rollup is current and exact
    day = NOW.date() - timedelta(days=1), NOW.date()
    assert live.store.usage_rows("default", *day, Pricing()) == \
        live.store.chargeback_from_samples("default", *day, Pricing())
    assert live.store.writer.pending_rows == 0


# ------------------------------------------------------------------ the OpenAPI contract

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]


def test_schemathesis_finds_no_server_error_and_no_response_off_the_schema(live: LiveServer) -> None:
    schema = schemathesis.openapi.from_url(live.url + "/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 11
    failures: list[str] = []
    for op in operations:
        # the rotation key is spent after one call; the others may do anything they are allowed
        secret = live.keys["rotator" if op.path == "/v1/keys/rotate" else "operator"]
        headers = {"Authorization": f"Bearer {secret}", "X-API-Key": secret}
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _run_operation(op, mode, headers, failures)
            except Unsatisfiable:  # no parameters to make invalid: nothing to send negatively
                continue
    assert failures == []


def _run_operation(op: Any, mode: GenerationMode, headers: dict[str, str],
                   failures: list[str]) -> None:
    @settings(BOUNDED, max_examples=10)
    @given(case=op.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        response = case.call(headers=headers, timeout=10)
        try:
            case.validate_response(response, checks=CHECKS)
        except Exception as exc:  # every failure is listed, not just the first
            failures.append(f"{op.label} {response.status_code}: {exc}")

    check()


# ------------------------------------------------------------------ bad text, deep nesting

def _raw(body: str) -> bytes:
    return body.encode()


@pytest.mark.parametrize("escape", ["\\udfff", "\\ud800", "\\u0000"])
async def test_no_endpoint_accepts_a_lone_surrogate_or_nul_and_nothing_stalls(
        tmp_path: Path, escape: str) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        ingest = {**srv.auth("ingest"), "Content-Type": "application/json"}
        for index, name in enumerate(STRING_FIELDS):
            body = json.dumps([SAMPLE, {**SAMPLE, name: "GPU-@"}]).replace("GPU-@", f"GPU-{escape}")
            response = await srv.http.post("/v1/metrics/ingest", content=_raw(body), headers=ingest)
            assert response.status_code == 400, (name, response.text)
            assert response.json() == {
                "error": f"Metric at index 1: {name} must not contain NUL or lone surrogate characters"}, index
        for name in ("hostname", "agent_version"):
            beat = {"agent_version": "1.0", "gpu_count": 1, "hostname": "h"}
            body = json.dumps({**beat, name: "@"}).replace("@", f"h{escape}")
            response = await srv.http.post("/v1/agent/heartbeat", content=_raw(body), headers=ingest)
            error = response.json()["error"]  # the ingest fields' rule, not pydantic's parse error
            assert response.status_code == 400 and f"{name}: " in error, response.text
            assert error.endswith("must not contain NUL or lone surrogate characters"), error
        for query in (f"from=2026-01-01{escape}&to=2026-01-02", "from=2026-01-01&to=2026-01-02%00",
                      "from=2026-01-01&to=2026-01-02&format=csv%ED%B3%BF"):
            response = await srv.http.get("/v1/chargeback/report?" + query, headers=srv.auth("read"))
            assert response.status_code == 400, query
        purge = await srv.http.post("/v1/gpu/purge", headers={**srv.auth("operator"),
                                    "Content-Type": "application/json"},
                                    content=_raw(f'{{"force": "{escape}"}}'))
        assert purge.status_code == 400
        # nothing bad reached the store: late, duplicate and fresh batches all land, reports are current
        start = NOW - timedelta(hours=2)
        def batch(uuid: str, first: int, n: int) -> list[dict[str, Any]]:
            return [{**SAMPLE, "gpu_uuid": uuid, "timestamp": (start + timedelta(minutes=first + i))
                     .strftime("%Y-%m-%dT%H:%M:%SZ")} for i in range(n)]
        for role in ("ingest", "other"):
            for body in (batch("GPU-a", 30, 30), batch("GPU-a", 0, 30), batch("GPU-a", 0, 60),
                         batch("GPU-b", 0, 10)):
                response = await srv.http.post("/v1/metrics/ingest", json=body, headers=srv.auth(role))
                assert response.status_code == 200, response.text
        assert srv.app.store.sample_count() == 2 * 70
        days = {"from": start.date().isoformat(), "to": NOW.date().isoformat()}
        report = await srv.http.get("/v1/chargeback/report", params=days, headers=srv.auth("read"))
        assert report.status_code == 200 and report.json()["summary"]["total_gpu_hours"] > 1
        store, first, last = srv.app.store, start.date(), NOW.date()
        assert store.usage_rows("default", first, last, Pricing()) == \
            store.chargeback_from_samples("default", first, last, Pricing())


@pytest.mark.parametrize(("method", "path", "role"), [
    ("POST", "/v1/metrics/ingest", "ingest"), ("POST", "/v1/agent/heartbeat", "ingest"),
    ("POST", "/v1/gpu/purge", "operator"),
])
async def test_json_nested_past_the_limit_is_a_400_on_every_endpoint(
        tmp_path: Path, method: str, path: str, role: str) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        headers = {**srv.auth(role), "Content-Type": "application/json"}
        for depth in (33, 1_100, 100_000):
            body = b"[" * depth + b"]" * depth
            response = await srv.http.request(method, path, content=body, headers=headers)
            assert response.status_code == 400, response.text
            assert response.json() == {"error": "Request body is nested too deeply: at most 32 levels"}
        # an unknown sample field nested deep: orjson parses it, the documented limit still holds
        deep = json.dumps([{**SAMPLE, "extra": json.loads("[" * 40 + "]" * 40)}])
        response = await srv.http.request(method, path, content=deep.encode(), headers=headers)
        assert response.status_code == 400
        assert (await srv.http.get("/healthz")).status_code == 200

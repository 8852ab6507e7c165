"""GET /v1/openapi.json: a valid OpenAPI 3.1 document listing every route."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.api_server import api_settings, running_app, store_app

EXPECTED = {
    ("get", "/v1/gpu/status"), ("get", "/v1/gpu/memory"), ("post", "/v1/gpu/purge"),
    ("post", "/v1/gpu/processes/{pid}/signal"),
    ("get", "/v1/metrics/ingest"), ("post", "/v1/metrics/ingest"),
    ("get", "/v1/chargeback/report"), ("post", "/v1/agent/heartbeat"), ("get", "/v1/agent/hosts"),
    ("post", "/v1/keys/rotate"), ("get", "/v1/keys/self"), ("get", "/v1/openapi.json"),
    ("get", "/healthz"),
    ("get", "/readyz"), ("get", "/metrics"),
    ("get", "/v1/export/days"), ("get", "/v1/export/samples"), ("get", "/v1/export/usage"),
}


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


async def test_document_lists_every_route_and_every_ref_resolves(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        response = await srv.http.get("/v1/openapi.json")
        assert response.status_code == 200
        doc = response.json()
    assert doc["openapi"].startswith("3.1")
    assert doc["info"]["title"] and doc["info"]["version"]
    listed = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert listed == EXPECTED
    refs = _refs(doc)
    assert refs, "operations refer to component schemas"
    for ref in refs:
        assert isinstance(_resolve(doc, ref), dict), ref
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    assert schemes["apiKeyHeader"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}


async def test_operations_describe_auth_limits_and_bodies(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        doc = (await srv.http.get("/v1/openapi.json")).json()
    ingest = doc["paths"]["/v1/metrics/ingest"]["post"]
    assert ingest["requestBody"]["content"]["application/json"]["schema"]["type"] == "array"
    assert {"401", "403", "429", "400"} <= set(ingest["responses"])
    assert "X-RateLimit-Reset" in ingest["responses"]["200"]["headers"]
    assert ingest["security"]
    assert doc["paths"]["/v1/metrics/ingest"]["get"]["security"] == []
    status = doc["paths"]["/v1/gpu/status"]["get"]
    assert status["responses"]["200"]["content"]["application/json"]["schema"] == \
        {"$ref": "#/components/schemas/GpuStatusResponse"}
    assert "headers" not in status["responses"]["200"]  # no rate limit of its own
    assert "wrong keys" in status["responses"]["429"]["description"]  # the failed-auth one
    report = doc["paths"]["/v1/chargeback/report"]["get"]
    assert [p["name"] for p in report["parameters"]] == ["from", "to", "format"]
    sample = doc["components"]["schemas"]["MetricSample"]
    assert set(sample["required"]) >= {"timestamp", "gpu_uuid", "power_draw_w"}
    assert sample["properties"]["temperature_c"]["maximum"] == 120


async def test_storeless_node_documents_only_the_operator_api() -> None:
    async with running_app() as srv:
        doc = (await srv.http.get("/v1/openapi.json")).json()
    assert set(doc["paths"]) == {"/v1/gpu/status", "/v1/gpu/memory", "/v1/gpu/purge",
                                 "/v1/gpu/processes/{pid}/signal", "/v1/openapi.json",
                                 "/healthz", "/readyz", "/metrics"}


async def test_every_status_a_route_answers_is_listed(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        doc = (await srv.http.get("/v1/openapi.json")).json()
    paths = doc["paths"]
    for ops in paths.values():
        for op in ops.values():
            # what the HTTP layer answers on any route
            assert {"400", "408", "413", "431", "500", "503", "504"} <= set(op["responses"])
    ingest = paths["/v1/metrics/ingest"]["post"]["responses"]
    assert {"415", "507", "401", "403", "429"} <= set(ingest)
    assert "415" in paths["/v1/agent/heartbeat"]["post"]["responses"]
    assert "415" in paths["/v1/gpu/purge"]["post"]["responses"]
    assert "507" in paths["/v1/chargeback/report"]["get"]["responses"]
    assert "507" not in paths["/v1/gpu/status"]["get"]["responses"]
    ready = paths["/readyz"]["get"]
    assert ready["security"] == [] and paths["/healthz"]["get"]["security"] == []
    assert ready["responses"]["503"]["content"]["application/json"]["schema"] == \
        {"$ref": "#/components/schemas/ReadyStatus"}
    report = paths["/v1/chargeback/report"]["get"]
    assert "`from` must not be after `to`" in report["description"]
    schemas = doc["components"]["schemas"]
    sample = schemas["MetricSample"]["properties"]
    assert sample["gpu_uuid"]["maxLength"] == 128
    assert sample["team_id"]["anyOf"][0]["maxLength"] == 128
    assert schemas["Heartbeat"]["properties"]["hostname"]["maxLength"] == 255


async def test_shared_gpu_fields_are_described(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        doc = (await srv.http.get("/v1/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    sample = schemas["MetricSample"]
    assert "identity is (account, gpu_uuid, timestamp, workload)" in sample["description"]
    fraction = sample["properties"]["gpu_fraction"]
    assert {"exclusiveMinimum": 0, "maximum": 1} in [
        {k: v for k, v in option.items() if k in ("exclusiveMinimum", "maximum")}
        for option in fraction["anyOf"]]
    assert "add up to at most 1" in fraction["description"] and "400" in fraction["description"]
    assert "sm_utilization" in sample["properties"]["gpu_fraction_basis"]["description"]
    for name in ("ReportSummary", "TeamUsage", "GpuArchUsage", "ModelUsage", "ChargebackCsvRow"):
        assert "share of a shared GPU" in schemas[name]["properties"]["shared_gpu_hours"]["description"], name
    assert "sm_util_pct" in schemas["GpuProcess"]["properties"]


async def test_metrics_and_export_list_the_statuses_they_answer(tmp_path: Path) -> None:
    async with store_app(tmp_path / "db.duckdb") as srv:
        doc = (await srv.http.get("/v1/openapi.json")).json()
        proxied = {"X-Forwarded-For": "203.0.113.9"}  # not taken for a loopback client
        assert (await srv.http.get("/metrics", headers=proxied)).status_code == 401
        wrong = await srv.http.get("/metrics", headers={**proxied, **srv.auth("ingest")})
        assert wrong.status_code == 403
    metrics = doc["paths"]["/metrics"]["get"]["responses"]
    assert {"200", "401", "403", "429"} <= set(metrics)
    assert set(metrics["200"]["content"]) == {"text/plain; version=0.0.4",
                                              "application/openmetrics-text; version=1.0.0"}
    for path in ("/v1/export/samples", "/v1/export/usage"):  # written in the store's folder
        assert "507" in doc["paths"][path]["get"]["responses"], path
    days = doc["paths"]["/v1/export/days"]["get"]
    assert "after `to`" in days["responses"]["400"]["description"]


async def test_routes_behind_a_key_list_the_429_of_too_many_wrong_keys(tmp_path: Path) -> None:
    # The failed-auth limiter answers 429 on every route behind a key, rate-limited or not
    # (GET /v1/gpu/status answered one the document did not list).
    settings = api_settings(**{"rate_limits.failed_auth.requests": 2})
    async with store_app(tmp_path / "db.duckdb", settings) as srv:
        wrong = {"Authorization": "Bearer gf_not_a_key"}
        codes = [(await srv.http.get("/v1/gpu/status", headers=wrong)).status_code
                 for _ in range(3)]
        doc = (await srv.http.get("/v1/openapi.json")).json()
    assert codes == [401, 401, 429]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if op["security"]:
                assert "429" in op["responses"], (method, path)
    status_429 = doc["paths"]["/v1/gpu/status"]["get"]["responses"]["429"]["description"]
    assert "wrong keys" in status_429

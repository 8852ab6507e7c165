"""An OpenAPI 3.1 document of every registered route, built from the pydantic schemas."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gpufleet.server import __version__
from gpufleet.server.auth import ANY_KEY, INGEST, OPERATOR, READ
from gpufleet.server.http.router import Route
from gpufleet.server.schemas import (
    MODELS_BY_NAME,
    SIMULATED_HEADER,
    ChargebackReport,
    ErrorBody,
    Heartbeat,
    HeartbeatResult,
    HostsResponse,
    IngestResult,
    KeyCreated,
    MetricSample,
    ReadyStatus,
)

_REF_TEMPLATE = "#/components/schemas/{model}"
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

_SCOPE_TEXT = {
    OPERATOR: "operator scope",
    INGEST: "ingest or operator scope",
    READ: "read or operator scope",
    ANY_KEY: "any valid key",
}
_ERRORS = {
    "400": "Invalid request body, parameters or HTTP framing",
    "401": "Missing or invalid API key",
    "403": "The key lacks the scope this endpoint requires",
    "408": "The request (headers or body) did not arrive in time",
    "413": "Request body too large",
    "415": "Content-Type must be application/json",
    "429": "Rate limit exceeded; see Retry-After and X-RateLimit-Reset",
    "429-auth": "Too many wrong keys from this address; see Retry-After",
    "431": "Request header fields too large",
    "500": "Internal server error; retry with exponential back-off",
    "503": "Unavailable now (too many connections, GPU backend or usage rollup); retry later",
    "504": "The request took too long to process",
    "507": "The store's disk is full; nothing was stored; retry after Retry-After",
    "409": "Simulated data (X-Gpufleet-Simulated: true) sent to a server that stores real data only",
}
# Statuses particular to one route (by operationId): added to, or replacing, the generic ones.
_ROUTE_ERRORS: dict[str, dict[str, str]] = {
    "signalGpuProcess": {
        "403": "The key lacks the operator scope, or this server may not signal that process "
               "(the error says why: another PID namespace, PID 1, the server itself, "
               "or the operating system refused)",
        "404": "The PID is not a GPU process of this node now (or it exited before the signal)",
        "503": "The signal audit cannot be written; nothing was sent",
        "507": "The store's disk is full: the signal audit cannot be written, so nothing was "
               "sent; retry after Retry-After",
    },
}
_EXPORT_FULL = {"507": "The store's disk is full: the day's file cannot be written there; "
                        "retry after Retry-After"}
_ROUTE_ERRORS.update({
    "exportSamples": _EXPORT_FULL,
    "exportUsage": _EXPORT_FULL,
    "exportDays": {"400": "A parameter is not a date, or `from` is after `to`"},
    # open to loopback clients; a key from anyone else ([metrics] access)
    "getMetrics": {
        "401": "A key is needed here (a client off loopback, or through a proxy) and is "
               "missing or invalid",
        "403": "The key lacks the read (or operator) scope",
        "429": "Too many wrong keys from this address; see Retry-After",
    },
})
# Path parameters that are numbers (the rest are strings).
_INTEGER_PARAMS = {"pid": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}}

# What the HTTP layer may answer on any route, before or around its handler.
_ANY_ROUTE = ("400", "408", "413", "431", "500", "503", "504")
# Routes that write to the store, or read the usage rollup (a full disk stops its upkeep).
_STORE_ROUTES = {IngestResult, HeartbeatResult, KeyCreated, ChargebackReport, HostsResponse}
_PERIOD_RULE = ("`from` must not be after `to`, and the period is at most 366 days "
                "(both dates inclusive, UTC)")
_RATE_HEADERS = {
    "X-RateLimit-Limit": "Requests allowed per window",
    "X-RateLimit-Remaining": "Requests left in the current window",
    "X-RateLimit-Reset": "Unix time (seconds) at which the bucket is full again",
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF_TEMPLATE.format(model=model.__name__)}


def _component_schemas() -> dict[str, Any]:
    # Request bodies in validation mode, the rest as sent; each model once, so no
    # "-Input"/"-Output" name suffixes.
    requests = {"MetricSample", "PurgeRequest", "Heartbeat", "SignalRequest"}
    models = [(cls, "validation" if name in requests else "serialization")
              for name, cls in MODELS_BY_NAME.items()]
    _, top = models_json_schema(models, ref_template=_REF_TEMPLATE)
    return dict(sorted(top.get("$defs", {}).items()))


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _operation(route: Route) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": route.name, "summary": route.summary or route.name}
    if route.request_model is not None:
        schema = _ref(route.request_model)
        if route.request_model is MetricSample:  # ingest takes an array of samples
            schema = {"type": "array", "minItems": 1, "items": schema}
        op["requestBody"] = {"required": route.request_model is not MODELS_BY_NAME["PurgeRequest"],
                             "content": _json_content(schema)}
    params = [{"name": name, "in": "path", "required": True,
               "schema": _INTEGER_PARAMS.get(name, {"type": "string"})}
              for name in _PARAM.findall(route.pattern)]
    if route.response_model is ChargebackReport:
        params += [
            {"name": "from", "in": "query", "required": True,
             "schema": {"type": "string", "format": "date"},
             "description": f"Start date (inclusive); {_PERIOD_RULE}"},
            {"name": "to", "in": "query", "required": True,
             "schema": {"type": "string", "format": "date"},
             "description": f"End date (inclusive); {_PERIOD_RULE}"},
            {"name": "format", "in": "query", "required": False,
             "schema": {"type": "string", "enum": ["json", "csv"], "default": "json"}},
        ]
    params += _simulated_parameter(route)
    if params:
        op["parameters"] = params
    limited = getattr(route.handler, "rate_limit", None) is not None
    ok: dict[str, Any] = {"description": "Success"}
    if route.response_model is not None:
        ok["content"] = _json_content(_ref(route.response_model))
    if route.response_model is ChargebackReport:
        ok["content"]["text/csv"] = {"schema": {"type": "string"}}
    if limited:
        ok["headers"] = {name: {"description": text, "schema": {"type": "integer"}}
                         for name, text in _RATE_HEADERS.items()}
    responses: dict[str, Any] = {"200": ok}
    wanted = list(_ANY_ROUTE)
    if route.request_model is not None:
        wanted.append("415")
    if route.response_model in _STORE_ROUTES:
        wanted.append("507")
    notes = []
    if route.auth is not None:
        wanted += ["401", "403"]
        op["security"] = [{"bearerAuth": []}, {"apiKeyHeader": []}]
        notes.append(f"Requires {_SCOPE_TEXT.get(route.auth, route.auth)}.")
    else:
        op["security"] = []
    if route.response_model is ChargebackReport:
        notes.append(f"{_PERIOD_RULE[0].upper()}{_PERIOD_RULE[1:]}.")
    if notes:
        op["description"] = " ".join(notes)
    if limited:
        wanted.append("429")
    particular = _ROUTE_ERRORS.get(route.name, {})
    if route.auth is not None and not limited and "429" not in particular:
        # the failed-auth limiter answers 429 on every route behind a key
        particular = {**particular, "429": _ERRORS["429-auth"]}
        wanted.append("429")
    _document_simulated(route, ok, wanted)
    for status in sorted(set(wanted) | set(particular)):
        responses[status] = {"description": particular.get(status) or _ERRORS[status],
                             "content": _json_content(_ref(ErrorBody))}
    if route.response_model is ReadyStatus:  # not ready: the same body, saying why
        responses["503"] = {"description": "Not ready: `error` says which check failed",
                            "content": _json_content(_ref(ReadyStatus))}
    op["responses"] = responses
    if route.openapi:  # a route that is not JSON, or whose access depends on the client
        op.update({k: (responses | v) if k == "responses" else v for k, v in route.openapi.items()})
    return op


def _simulated_parameter(route: Route) -> list[dict[str, Any]]:
    """Ingest and heartbeat take the header that marks simulated data."""
    if route.request_model not in (MetricSample, Heartbeat):
        return []
    return [{"name": SIMULATED_HEADER, "in": "header", "required": False,
             "schema": {"type": "string", "enum": ["true", "false"], "default": "false"},
             "description": "true: the body is simulated data; a server that stores real data "
                            "only answers 409"}]


def _document_simulated(route: Route, ok: dict[str, Any], wanted: list[str]) -> None:
    """Chargeback answers say whether the store holds simulated data; marked ingest may get 409."""
    if route.request_model in (MetricSample, Heartbeat):
        wanted.append("409")
    if route.response_model is ChargebackReport:
        ok.setdefault("headers", {})[SIMULATED_HEADER] = {
            "description": "true when the store holds simulated samples (the JSON's `simulated`; "
                           "the CSV's columns are fixed, so this header says it)",
            "schema": {"type": "string", "enum": ["true", "false"]}}


def openapi_document(routes: list[Route], *, server_url: str | None = None) -> dict[str, Any]:
    """The whole document: paths from ``routes``, components from ``server.schemas``."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if route.method == "HEAD":
            continue
        paths.setdefault(route.pattern, {})[route.method.lower()] = _operation(route)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "gpufleet API", "version": __version__,
                 "description": "Operator GPU API, metrics ingest, chargeback and agents."},
        "paths": paths,
        "components": {
            "schemas": _component_schemas(),
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": "Authorization: Bearer <key>"},
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc

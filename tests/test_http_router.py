"""Router resolution and the one exception-to-response mapping, without a socket."""

from __future__ import annotations

import json
import logging

import pytest
from pydantic import BaseModel, ValidationError

from gpufleet.server.http.errors import error_response
from gpufleet.server.http.router import Router
from gpufleet.server.http.types import HttpError, Request, Response


async def status(request: Request) -> Response:
    return Response.json({"ok": True})


async def key(request: Request) -> Response:
    return Response.json({"key": request.path_params})


class Body(BaseModel):
    force: bool = False


def build() -> Router:
    router = Router()
    router.get("/v1/gpu/status", status, name="gpu_status", summary="GPU status",
               response_model=Body, auth="operator")
    router.add("post", "/v1/gpu/purge", status, request_model=Body, auth="operator")
    router.add("DELETE", "/v1/keys/{key_id}", key)
    router.get("/v1/keys/{key_id}", key)
    router.get("/v1/teams/{team}/gpus/{index}", key)
    return router


def test_static_and_parameterised_routes_resolve() -> None:
    router = build()
    assert router.resolve("GET", "/v1/gpu/status") == (status, {})
    assert router.resolve("DELETE", "/v1/keys/k-1") == (key, {"key_id": "k-1"})
    assert router.resolve("GET", "/v1/teams/ml/gpus/3") == (key, {"team": "ml", "index": "3"})
    assert router.resolve("HEAD", "/v1/keys/k-1") == (key, {"key_id": "k-1"})


@pytest.mark.parametrize("path", ["/v1/gpu/status/", "/v1/keys/", "/v1/keys/a/b", "/nope", "/"])
def test_unknown_paths_are_404_naming_the_path(path: str) -> None:
    with pytest.raises(HttpError) as caught:
        build().resolve("GET", path)
    assert (caught.value.status, caught.value.message) == (404, f"Not found: {path}")


def test_wrong_method_is_405_listing_the_allowed_ones() -> None:
    router = build()
    with pytest.raises(HttpError) as caught:
        router.resolve("PUT", "/v1/keys/k-1")
    assert caught.value.status == 405
    assert caught.value.headers == {"Allow": "DELETE, GET, HEAD"}
    with pytest.raises(HttpError) as caught:
        router.resolve("GET", "/v1/gpu/purge")
    assert caught.value.headers == {"Allow": "POST"}


def test_routes_carry_their_metadata_in_registration_order() -> None:
    routes = build().routes()
    assert [(r.method, r.pattern) for r in routes][:2] == [
        ("GET", "/v1/gpu/status"), ("POST", "/v1/gpu/purge")]
    first = routes[0]
    assert (first.name, first.summary, first.auth, first.response_model) == (
        "gpu_status", "GPU status", "operator", Body)
    assert routes[1].name == "POST /v1/gpu/purge" and routes[1].request_model is Body
    assert routes[2].params == ("key_id",)


def test_conflicting_registrations_are_refused() -> None:
    router = build()
    with pytest.raises(ValueError, match="already registered"):
        router.get("/v1/gpu/status", status)
    with pytest.raises(ValueError, match="clashes"):
        router.add("POST", "/v1/keys/{other}", key)
    with pytest.raises(ValueError, match="must start"):
        router.get("v1/x", status)


def body_of(response: Response) -> dict[str, str]:
    assert response.content_type == "application/json"
    return json.loads(response.body)


def test_error_response_maps_each_kind_of_exception(caplog: pytest.LogCaptureFixture) -> None:
    limited = error_response(HttpError(429, "Rate limit exceeded", {"Retry-After": "3"}))
    assert (limited.status, body_of(limited)) == (429, {"error": "Rate limit exceeded"})
    assert limited.headers == [("Retry-After", "3")]

    timeout = error_response(TimeoutError())
    assert timeout.status == 504 and "error" in body_of(timeout)

    with pytest.raises(ValidationError) as invalid:
        Body.model_validate({"force": "perhaps-secret"})
    bad = error_response(invalid.value)
    assert bad.status == 400
    assert body_of(bad)["error"] == "Invalid request: force: Input should be a valid boolean, " \
                                    "unable to interpret input"
    assert b"perhaps-secret" not in bad.body

    with caplog.at_level(logging.ERROR, logger="gpufleet.http"):
        crash = error_response(KeyError("token=abc"))
    assert (crash.status, body_of(crash)) == (500, {"error": "Internal server error"})
    assert "KeyError" in caplog.text


def test_many_validation_problems_are_summarised() -> None:
    class Many(BaseModel):
        a: int
        b: int
        c: int
        d: int
        e: int
        f: int
        g: int

    with pytest.raises(ValidationError) as invalid:
        Many.model_validate({})
    message = body_of(error_response(invalid.value))["error"]
    assert message.startswith("Invalid request: a: Field required; b: Field required")
    assert message.endswith("; and 2 more")

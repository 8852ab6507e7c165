"""Operator GPU API over HTTP: documented shapes, auth, purge, OpenAPI; a real server on loopback."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from gpufleet.server.auth import StaticKeyResolver
from gpufleet.server.client import AsyncGpuFleetClient, Forbidden, GpuFleetError, Unauthorized
from gpufleet.server.gpu.base import BackendUnavailable, GpuBackend, GpuSnapshot
from gpufleet.server.gpu.simulated import SimulatedBackend
from gpufleet.server.schemas import (
    GpuMemoryResponse,
    GpuStatusResponse,
    KeyInfo,
    PurgeResult,
    utc_now,
)
from tests.api_server import OPERATOR_TOKEN, api_settings, running_app

STATUS_GPU_FIELDS = {"index", "name", "memory", "utilization", "temperature_c"}
MEMORY_FIELDS = {"total_mb", "used_mb", "free_mb", "total_gb", "used_gb", "free_gb", "percent_used"}


async def test_status_has_the_documented_shape() -> None:
    async with running_app() as srv:
        response = await srv.http.get("/v1/gpu/status", headers=srv.auth("operator"))
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "success"
        assert body["timestamp"].endswith("Z")
        assert body["total_gpus"] == len(body["gpus"]) > 0
        gpu = body["gpus"][0]
        assert set(gpu) >= STATUS_GPU_FIELDS
        assert set(gpu["memory"]) >= MEMORY_FIELDS
        assert set(gpu["utilization"]) >= {"gpu_percent", "memory_percent"}
        assert gpu["memory"]["total_mb"] == gpu["memory"]["used_mb"] + gpu["memory"]["free_mb"]
        assert {"pid", "name", "memory_mb"} <= set(body["processes"][0])
        assert body["node"]["simulated"] is True
        assert [m["name"] for m in body["models"]], "the simulated node has loaded models"
        GpuStatusResponse.model_validate(body)


async def test_memory_has_the_documented_shape() -> None:
    async with running_app() as srv:
        body = (await srv.http.get("/v1/gpu/memory", headers=srv.auth("operator"))).json()
        assert body["status"] == "success"
        entry = body["memory"][0]
        assert {"total_gb", "used_gb", "free_gb", "percent_used", "percent_free"} <= set(entry)
        assert entry["percent_used"] + entry["percent_free"] == pytest.approx(100.0, abs=0.11)
        GpuMemoryResponse.model_validate(body)


async def test_purge_without_body_defaults_to_no_force_and_reports_before_after() -> None:
    # which simulated models are in use follows the clock: at 04:00 UTC the inference
    # model is idle (unloaded) and the embedding model busy (skipped without force)
    night = datetime(2026, 3, 3, 4, 0, tzinfo=UTC)
    async with running_app(backend=SimulatedBackend(clock=lambda: night)) as srv:
        response = await srv.http.post("/v1/gpu/purge", headers=srv.auth("operator"))
        assert response.status_code == 200, response.text
        result = PurgeResult.model_validate(response.json())
        body = response.json()
        for name in ("actions", "memory_before", "memory_after", "memory_freed_gb",
                     "models_unloaded", "errors", "recommendation"):
            assert name in body
        # the simulated node keeps one model in use: no force means it is skipped and said so
        assert result.errors and "in use" in result.errors[0]
        assert result.memory_after.used_gb < result.memory_before.used_gb


async def test_forced_purge_unloads_everything_through_the_sdk() -> None:
    async with running_app() as srv, AsyncGpuFleetClient(srv.url, api_key=OPERATOR_TOKEN) as c:
        before = await c.get_gpu_status()
        result = await c.purge_gpu(force=True)
        assert set(result.models_unloaded) == {m.name for m in before.models or []}
        # the simulated node's unmanaged process keeps its memory: named, and not a success
        assert result.status == "partial"
        assert [e.split(":")[0] for e in result.errors] == ["GPU memory is still held after the purge"]
        after = await c.get_gpu_status()
        assert after.models == []


async def test_purge_body_is_validated() -> None:
    async with running_app() as srv:
        bad = await srv.http.post("/v1/gpu/purge", headers=srv.auth("operator"),
                                  json={"force": "yes please"})
        assert bad.status_code == 400
        assert "force" in bad.json()["error"]
        for truthy in ("yes", 1, "true"):  # force may SIGKILL: only a JSON true means it
            loose = await srv.http.post("/v1/gpu/purge", headers=srv.auth("operator"),
                                        json={"force": truthy})
            assert loose.status_code == 400, truthy
        unknown_gpu = await srv.http.post("/v1/gpu/purge", headers=srv.auth("operator"),
                                          json={"gpu_indices": [99]})
        assert unknown_gpu.status_code == 400
        nothing = await srv.http.post("/v1/gpu/purge", headers=srv.auth("operator"),
                                      json={"gpu_indices": []})
        assert nothing.status_code == 400
        assert "gpu_indices" in nothing.json()["error"]
        not_json = await srv.http.post("/v1/gpu/purge", headers={**srv.auth("operator"),
                                        "Content-Type": "text/plain"}, content=b"force")
        assert not_json.status_code == 415


@pytest.mark.parametrize("path", ["/v1/gpu/status", "/v1/gpu/memory"])
async def test_gpu_routes_need_an_operator_key(path: str) -> None:
    read_key = KeyInfo(id="k-read", name="reader", account="default", scopes=["read", "ingest"],
                       prefix="gpf_read", created_at=utc_now())
    op_key = KeyInfo(id="k-op", name="op", account="default", scopes=["operator"],
                     prefix="gpf_op", created_at=utc_now())
    resolver = StaticKeyResolver({"reader-secret": read_key, "op-secret": op_key})
    async with running_app(resolver=resolver,
                           keys={"read": "reader-secret", "operator": "op-secret"}) as srv:
        missing = await srv.http.get(path)
        assert missing.status_code == 401
        assert missing.json() == {"error": "Missing or invalid API key"}
        assert missing.headers["www-authenticate"].startswith("Bearer")
        unknown = await srv.http.get(path, headers={"Authorization": "Bearer nope"})
        assert unknown.status_code == 401
        wrong_scheme = await srv.http.get(path, headers={"Authorization": "Basic b3A6c2VjcmV0"})
        assert wrong_scheme.status_code == 401
        forbidden = await srv.http.get(path, headers=srv.auth("read"))
        assert forbidden.status_code == 403
        assert forbidden.json()["error"] == "This endpoint requires an operator-scoped key"
        for header in ("bearer", "x-api-key"):
            ok = await srv.http.get(path, headers=srv.auth("operator", header=header))
            assert ok.status_code == 200


async def test_sdk_raises_typed_errors_with_the_server_message() -> None:
    async with running_app() as srv, AsyncGpuFleetClient(srv.url, api_key="wrong") as c:
        with pytest.raises(Unauthorized) as caught:
            await c.get_gpu_status()
        assert caught.value.status == 401
        assert caught.value.message == "Missing or invalid API key"
    reader = KeyInfo(id="r", name="r", account="a", scopes=["read"], prefix="r",
                     created_at=utc_now())
    async with running_app(resolver=StaticKeyResolver({"reader": reader})) as srv2, \
            AsyncGpuFleetClient(srv2.url, api_key="reader") as c:
        with pytest.raises(Forbidden, match="operator-scoped"):
            await c.get_gpu_memory()


class _BrokenBackend(GpuBackend):
    def snapshot(self) -> GpuSnapshot:
        raise BackendUnavailable("NVML: driver not loaded")


async def test_backend_failure_is_a_503_not_a_crash() -> None:
    async with running_app(backend=_BrokenBackend(), resolver=StaticKeyResolver.operator("t"),
                           keys={"operator": "t"}) as srv:
        response = await srv.http.get("/v1/gpu/status", headers=srv.auth("operator"))
        assert response.status_code == 503
        assert "driver not loaded" in response.json()["error"]
        async with AsyncGpuFleetClient(srv.url, api_key="t") as c:
            with pytest.raises(GpuFleetError) as caught:
                await c.get_gpu_memory()
            assert caught.value.status == 503


async def test_concurrent_status_requests_share_snapshots() -> None:
    class CountingBackend(GpuBackend):
        def __init__(self) -> None:
            from gpufleet.server.gpu.simulated import SimulatedBackend

            self.inner = SimulatedBackend()
            self.calls = 0

        def snapshot(self) -> GpuSnapshot:
            self.calls += 1
            return self.inner.snapshot()

    backend = CountingBackend()
    async with running_app(api_settings(), backend=backend) as srv:
        responses = await asyncio.gather(*(srv.http.get("/v1/gpu/memory",
                                                        headers=srv.auth("operator"))
                                           for _ in range(20)))
        assert all(r.status_code == 200 for r in responses)
        assert 1 <= backend.calls <= 20


async def test_every_purge_is_audited_with_the_callers_key_name(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.api_server import store_app

    async with store_app(tmp_path / "db.duckdb") as srv:
        response = await srv.http.post("/v1/gpu/purge", json={"force": True},
                                       headers=srv.auth("operator"))
        assert response.status_code == 200
        audit = srv.app.store.list_purges("default")
        assert len(audit) == 1
        assert audit[0]["key_name"] == "operator-key"
        assert audit[0]["force"] is True


async def test_a_purge_may_outlast_the_default_handler_deadline() -> None:
    # Waiting for memory to settle takes at least one 0.25 s poll: far past this deadline.
    settings = api_settings(**{"limits.handler_timeout_s": 0.05, "server.purge_settle_s": 2.0})
    async with running_app(settings) as srv:
        response = await srv.http.post("/v1/gpu/purge", json={"force": True},
                                       headers=srv.auth("operator"))
        assert response.status_code == 200, response.text
        assert response.json()["models_unloaded"]


def test_the_purge_deadline_covers_runtimes_grace_and_settling() -> None:
    from gpufleet.server.api.gpu import PROCESS_KILL_WAIT_S, PURGE_MARGIN_S, purge_deadline_s

    assert purge_deadline_s(api_settings()) == 30.0  # nothing configured: the server default
    settings = api_settings(**{
        "server.purge_settle_s": 5.0,
        "runtimes": [{"type": "ollama", "url": "http://127.0.0.1:1", "timeout_s": 10.0},
                     {"type": "triton", "url": "http://127.0.0.1:2", "timeout_s": 8.0},
                     {"type": "process", "process_names": ["python"], "grace_s": 20.0}],
    })
    # listing (10, concurrent) + one unload wait per server (10 + 8) + grace and SIGKILL wait
    expected = 5.0 + 10.0 + 18.0 + 20.0 + PROCESS_KILL_WAIT_S + PURGE_MARGIN_S
    assert purge_deadline_s(settings) == expected > settings.limits.handler_timeout_s


async def test_one_slow_runtime_does_not_hide_the_other_runtimes_models(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from gpufleet.server.gpu.simulated import SimulatedBackend
    from gpufleet.server.purge import PurgeService
    from gpufleet.server.runtimes import RuntimeAdapter, SimulatedAdapter

    class HangingAdapter(RuntimeAdapter):
        name = "stuck"

        async def list_models(self):  # type: ignore[no-untyped-def]
            await asyncio.Event().wait()
            return []

        async def unload(self, model, *, force):  # type: ignore[no-untyped-def]
            raise AssertionError("not reached")

    monkeypatch.setattr("gpufleet.server.api.gpu.MODELS_TIMEOUT_S", 0.2)
    backend = SimulatedBackend()
    purge = PurgeService(backend, [HangingAdapter(), SimulatedAdapter(backend)], settle_s=0.5)
    async with running_app(backend=backend, purge=purge) as srv:
        body = (await srv.http.get("/v1/gpu/status", headers=srv.auth("operator"))).json()
    expected = {m.name for m in backend.loaded_models()}
    assert expected and {m["name"] for m in body["models"]} == expected


async def test_a_purge_cut_short_by_its_deadline_is_still_audited(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import gpufleet.server.api.gpu as gpu_api
    from gpufleet.server.gpu.simulated import SimulatedBackend
    from gpufleet.server.purge import PurgeService
    from gpufleet.server.runtimes import RuntimeAdapter
    from gpufleet.server.schemas import LoadedModel
    from gpufleet.server.store import MetricsStore

    entered = asyncio.Event()

    class StuckOnSecond(RuntimeAdapter):
        name = "stub"

        async def list_models(self):  # type: ignore[no-untyped-def]
            return [LoadedModel(name=n, runtime="stub", gpu_index=0, memory_mb=1024)
                    for n in ("first", "second")]

        async def unload(self, model, *, force):  # type: ignore[no-untyped-def]
            if model.name == "first":
                return "unloaded first (stub)"
            entered.set()  # signalled; its exit is never confirmed
            await asyncio.Event().wait()
            raise AssertionError("not reached")

    # The real deadline covers every configured runtime; this stub needs only a short one.
    monkeypatch.setattr(gpu_api, "purge_deadline_s", lambda settings: 1.0)  # short, with room for a loaded box to unload "first"
    backend = SimulatedBackend()
    store = MetricsStore.open(tmp_path / "db.duckdb")
    try:
        op = store.create_key("op-key", ["operator"], "default").key
        async with running_app(api_settings(), backend=backend, store=store,
                               keys={"operator": op},
                               purge=PurgeService(backend, [StuckOnSecond()], settle_s=0.0)) as srv:
            response = await srv.http.post("/v1/gpu/purge", json={"force": True},
                                           headers=srv.auth("operator"))
            assert response.status_code == 504
            assert entered.is_set()
            (row,) = store.list_purges("default")
            assert row["key_name"] == "op-key" and row["force"] is True
            assert row["status"] == "partial"
            result = PurgeResult.model_validate(row["result"])
            assert result.actions == ["unloaded first (stub)"]
            assert result.models_unloaded == ["first"]
            assert any("interrupted" in e and "deadline" in e for e in result.errors)
            assert any(e.startswith("interrupted while unloading second (stub)")
                       for e in result.errors)
    finally:
        store.close()

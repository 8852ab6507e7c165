"""The Ollama and Triton adapters against fake servers speaking the real protocols on loopback."""

from __future__ import annotations

import socket

import pytest

from gpufleet.server.runtimes import OllamaAdapter, RuntimeAdapterError, TritonAdapter
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.triton_server import FakeTriton


@pytest.fixture
def ollama():
    with FakeOllama() as fake:
        yield fake


@pytest.fixture
def triton():
    with FakeTriton() as fake:
        yield fake


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# ---------------------------------------------------------------- Ollama


async def test_ollama_lists_loaded_models_with_vram(ollama):
    ollama.load("qwen-3.5-27b", 20480)
    ollama.pin("llama3.2", 4096)
    models = {m.name: m for m in await OllamaAdapter(ollama.url, 2.0).list_models()}
    assert set(models) == {"qwen-3.5-27b", "llama3.2"}
    qwen = models["qwen-3.5-27b"]
    assert (qwen.runtime, qwen.memory_mb, qwen.gpu_index, qwen.in_use) == ("ollama", 20480, None, False)
    # keep_alive -1 puts expires_at centuries ahead: pinned on purpose, so in use.
    assert models["llama3.2"].in_use is True


async def test_ollama_unload_sends_keep_alive_zero_and_waits_until_gone(ollama):
    ollama.load("qwen-3.5-27b", 20480)
    adapter = OllamaAdapter(ollama.url, 2.0)
    (model,) = await adapter.list_models()
    assert await adapter.unload(model, force=False) == "unloaded qwen-3.5-27b (ollama)"
    assert ollama.loaded == []
    assert ("POST", "/api/generate", {"model": "qwen-3.5-27b", "keep_alive": 0}) in ollama.requests


async def test_ollama_unload_failure_carries_the_servers_message(ollama):
    ollama.load("qwen-3.5-27b", 20480)
    ollama.fail_unload("qwen-3.5-27b", 500, "llama runner process has terminated")
    adapter = OllamaAdapter(ollama.url, 2.0)
    (model,) = await adapter.list_models()
    with pytest.raises(RuntimeAdapterError, match="answered 500: llama runner process has terminated"):
        await adapter.unload(model, force=True)


async def test_ollama_model_that_stays_loaded_is_not_reported_unloaded(ollama):
    ollama.load("qwen-3.5-27b", 20480)
    ollama.keep_loaded("qwen-3.5-27b")
    adapter = OllamaAdapter(ollama.url, 0.3)
    (model,) = await adapter.list_models()
    with pytest.raises(RuntimeAdapterError, match="still loaded"):
        await adapter.unload(model, force=False)


async def test_ollama_unreachable_is_a_clear_error():
    with pytest.raises(RuntimeAdapterError, match=r"ollama: cannot reach http://127\.0\.0\.1"):
        await OllamaAdapter(_closed_port_url(), 1.0).list_models()


async def test_ollama_ps_error_is_reported(ollama):
    ollama.fail_ps(500, "server busy")
    with pytest.raises(RuntimeAdapterError, match=r"GET /api/ps answered 500: server busy"):
        await OllamaAdapter(ollama.url, 1.0).list_models()


# ---------------------------------------------------------------- Triton


async def test_triton_lists_ready_models_once_each_with_gpu_memory(triton):
    triton.load("resnet50", 2048, gpu_id=1, versions=("1", "2"))
    triton.load("bert", None, busy=True)
    triton.add_unavailable("old-model")
    models = {m.name: m for m in await TritonAdapter(triton.url, 2.0).list_models()}
    assert set(models) == {"resnet50", "bert"}
    assert (models["resnet50"].gpu_index, models["resnet50"].memory_mb) == (1, 4096)  # two versions
    assert models["resnet50"].in_use is False  # never ran an inference
    assert models["bert"].in_use is True  # ran one just now
    assert ("POST", "/v2/repository/index", {"ready": True}) in triton.requests


async def test_triton_in_use_reason_says_when_it_last_ran(triton):
    triton.load("bert", busy=True)
    adapter = TritonAdapter(triton.url, 2.0)
    (model,) = await adapter.list_models()
    assert adapter.in_use_reason(model).startswith("in use (ran an inference ")


async def test_triton_without_statistics_counts_models_as_in_use(triton):
    triton.load("resnet50", 2048)
    triton.fail_stats()
    adapter = TritonAdapter(triton.url, 2.0)
    (model,) = await adapter.list_models()
    assert model.in_use is True
    assert "statistics unavailable" in adapter.in_use_reason(model)


async def test_triton_unload_uses_the_repository_api(triton):
    triton.load("resnet50", 2048)
    adapter = TritonAdapter(triton.url, 2.0)
    (model,) = await adapter.list_models()
    assert await adapter.unload(model, force=False) == "unloaded resnet50 (triton)"
    assert triton.ready == []
    assert ("POST", "/v2/repository/models/resnet50/unload", {}) in triton.requests


async def test_triton_unload_failure_is_a_clear_error(triton):
    triton.load("resnet50", 2048)
    triton.fail_unload("resnet50", 400, "failed to unload 'resnet50': backend error")
    adapter = TritonAdapter(triton.url, 2.0)
    (model,) = await adapter.list_models()
    with pytest.raises(RuntimeAdapterError, match="answered 400: failed to unload 'resnet50'"):
        await adapter.unload(model, force=True)
    assert triton.ready == ["resnet50"]

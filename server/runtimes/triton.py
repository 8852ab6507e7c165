"""Triton Inference Server: the model repository extension lists and unloads models.

In use: Triton's statistics extension (``GET /v2/models/stats``) has no count
of requests in flight, but it does say when each model last ran an inference
(``last_inference``, ms since the epoch). A model that ran one within
``busy_window_s`` counts as in use; so does a model whose statistics cannot be
read (usage unknown), so that only force unloads what we cannot vouch for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from gpufleet.server.runtimes.base import (
    RuntimeAdapter,
    RuntimeAdapterError,
    request_json,
    runtime_client,
)
from gpufleet.server.schemas import LoadedModel

BYTES_PER_MIB = 1024 * 1024
DEFAULT_BUSY_WINDOW_S = 60.0
POLL_INTERVAL_S = 0.1


class TritonAdapter(RuntimeAdapter):
    """A Triton server's READY models."""

    def __init__(self, url: str, timeout_s: float = 10.0, *, name: str = "triton",
                 busy_window_s: float = DEFAULT_BUSY_WINDOW_S,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.busy_window_s = busy_window_s
        self._clock = clock or (lambda: datetime.now(UTC))
        self._reasons: dict[str, str] = {}

    def _client(self) -> httpx.AsyncClient:
        return runtime_client(self.timeout_s)

    async def _ready_names(self, client: httpx.AsyncClient) -> list[str]:
        index = await request_json(client, "POST", f"{self.url}/v2/repository/index",
                                   runtime=self.name, body={"ready": True})
        if not isinstance(index, list):
            raise RuntimeAdapterError(f"{self.name}: repository index answered an unexpected shape")
        # One entry per ready version; a model is unloaded as a whole.
        ready = (str(e["name"]) for e in index
                 if isinstance(e, dict) and e.get("state") == "READY" and e.get("name"))
        return list(dict.fromkeys(ready))

    async def list_models(self) -> list[LoadedModel]:
        async with self._client() as client:
            names = await self._ready_names(client)
            stats: dict[str, list[dict[str, Any]]] | None
            try:
                stats = _stats_by_name(await request_json(
                    client, "GET", f"{self.url}/v2/models/stats", runtime=self.name))
            except RuntimeAdapterError:
                stats = None
        now_ms = self._clock().timestamp() * 1000.0
        models: list[LoadedModel] = []
        self._reasons = {}
        for name in names:
            entries = (stats or {}).get(name, [])
            if stats is None:
                in_use, reason = True, "usage unknown (statistics unavailable)"
            else:
                last = max((int(e.get("last_inference") or 0) for e in entries), default=0)
                age_s = (now_ms - last) / 1000.0
                in_use = last > 0 and age_s < self.busy_window_s
                reason = f"ran an inference {max(age_s, 0):.0f}s ago"
            self._reasons[name] = reason
            gpu_index, memory_mb = _gpu_memory(entries)
            models.append(LoadedModel(name=name, runtime=self.name, gpu_index=gpu_index,
                                      memory_mb=memory_mb, in_use=in_use))
        return models

    def in_use_reason(self, model: LoadedModel) -> str:
        return f"in use ({self._reasons[model.name]})" if model.name in self._reasons else "in use"

    async def unload(self, model: LoadedModel, *, force: bool) -> str:
        url = f"{self.url}/v2/repository/models/{quote(model.name, safe='')}/unload"
        async with self._client() as client:
            await request_json(client, "POST", url, runtime=self.name, body={})
            if not await self._wait_gone(client, model.name):
                raise RuntimeAdapterError(
                    f"{self.name}: {model.name} still READY {self.timeout_s:g}s after unload"
                )
        return f"unloaded {model.name} ({self.name})"

    async def _wait_gone(self, client: httpx.AsyncClient, model_name: str) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while model_name in await self._ready_names(client):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(POLL_INTERVAL_S)
        return True


def _stats_by_name(payload: Any) -> dict[str, list[dict[str, Any]]]:
    if not isinstance(payload, dict) or not isinstance(payload.get("model_stats"), list):
        raise RuntimeAdapterError("statistics answered an unexpected shape")
    out: dict[str, list[dict[str, Any]]] = {}
    for entry in payload["model_stats"]:
        if isinstance(entry, dict) and entry.get("name"):
            out.setdefault(str(entry["name"]), []).append(entry)
    return out


def _gpu_memory(entries: list[dict[str, Any]]) -> tuple[int | None, int | None]:
    """GPU and MiB from the statistics' ``memory_usage`` (newer Triton), when reported."""
    total = 0
    devices: set[int] = set()
    for entry in entries:
        for usage in entry.get("memory_usage") or []:
            if isinstance(usage, dict) and usage.get("type") == "GPU":
                total += int(usage.get("byte_size") or 0)
                devices.add(int(usage.get("id") or 0))
    if not devices:
        return None, None
    return (devices.pop() if len(devices) == 1 else None), total // BYTES_PER_MIB

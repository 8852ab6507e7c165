"""Ollama: ``GET /api/ps`` lists loaded models, ``keep_alive: 0`` unloads one.

In use: Ollama does not report in-flight requests, and an unload with
``keep_alive: 0`` takes effect only once the model's running requests finish,
so a purge never cuts a generation short. What Ollama does show is how long a
model is meant to stay resident: a model loaded with a negative ``keep_alive``
(or one longer than ``pinned_after_s``) has an ``expires_at`` far in the
future, meaning someone deliberately pinned it. Such a model counts as in use
and is unloaded only with force; every other model is not in use.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from gpufleet.server.runtimes.base import (
    RuntimeAdapter,
    RuntimeAdapterError,
    request_json,
    runtime_client,
)
from gpufleet.server.schemas import LoadedModel

BYTES_PER_MIB = 1024 * 1024
DEFAULT_PINNED_AFTER_S = 24 * 3600.0
POLL_INTERVAL_S = 0.1
# Go writes RFC 3339 with up to nine fraction digits; Python reads at most six.
_FRACTION = re.compile(r"(\.\d{6})\d+")


class OllamaAdapter(RuntimeAdapter):
    """An Ollama server's loaded models."""

    def __init__(self, url: str, timeout_s: float = 10.0, *, name: str = "ollama",
                 pinned_after_s: float = DEFAULT_PINNED_AFTER_S,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.pinned_after_s = pinned_after_s
        self._clock = clock or (lambda: datetime.now(UTC))

    def _client(self) -> httpx.AsyncClient:
        return runtime_client(self.timeout_s)

    async def list_models(self) -> list[LoadedModel]:
        async with self._client() as client:
            payload = await request_json(client, "GET", f"{self.url}/api/ps", runtime=self.name)
        if not isinstance(payload, dict) or not isinstance(payload.get("models", []), list):
            raise RuntimeAdapterError(f"{self.name}: /api/ps answered an unexpected shape")
        now = self._clock()
        return [self._model(entry, now) for entry in payload.get("models") or []
                if isinstance(entry, dict) and (entry.get("name") or entry.get("model"))]

    def _model(self, entry: dict[str, Any], now: datetime) -> LoadedModel:
        vram = entry.get("size_vram")
        expires_at = _parse_time(entry.get("expires_at"))
        pinned = expires_at is not None and expires_at - now > timedelta(seconds=self.pinned_after_s)
        return LoadedModel(
            name=str(entry.get("name") or entry.get("model")),
            runtime=self.name,
            gpu_index=None,  # Ollama does not say which GPU holds a model
            memory_mb=int(vram) // BYTES_PER_MIB if isinstance(vram, int | float) else None,
            in_use=pinned,
        )

    def in_use_reason(self, model: LoadedModel) -> str:
        return "pinned in memory (keep_alive)"

    async def unload(self, model: LoadedModel, *, force: bool) -> str:
        async with self._client() as client:
            await request_json(client, "POST", f"{self.url}/api/generate", runtime=self.name,
                               body={"model": model.name, "keep_alive": 0})
            # Ollama answers before the runner has let go; only /api/ps says it went.
            if not await self._wait_gone(client, model.name):
                raise RuntimeAdapterError(
                    f"{self.name}: {model.name} still loaded {self.timeout_s:g}s after "
                    "keep_alive 0 (running requests finish first)"
                )
        return f"unloaded {model.name} ({self.name})"

    async def _wait_gone(self, client: httpx.AsyncClient, model_name: str) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while True:
            payload = await request_json(client, "GET", f"{self.url}/api/ps", runtime=self.name)
            names = {str(m.get("name") or m.get("model")) for m in (payload or {}).get("models") or []
                     if isinstance(m, dict)}
            if model_name not in names:
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(POLL_INTERVAL_S)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    text = _FRACTION.sub(r"\1", value.strip()).replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed

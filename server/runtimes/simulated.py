"""The simulated backend's models: what a purge unloads on a simulated node."""

from __future__ import annotations

import asyncio

from gpufleet.server.gpu.base import ModelHost
from gpufleet.server.runtimes.base import RuntimeAdapter, RuntimeAdapterError
from gpufleet.server.schemas import LoadedModel


class SimulatedAdapter(RuntimeAdapter):
    """Wraps a ModelHost; its in-use flags are the host's own."""

    def __init__(self, model_host: ModelHost, *, name: str = "simulated") -> None:
        self.name = name
        self.model_host = model_host

    async def list_models(self) -> list[LoadedModel]:
        # The host's runtime labels ("ollama", "vllm", ...) are kept: they are what it pretends.
        return await asyncio.to_thread(self.model_host.loaded_models)

    async def unload(self, model: LoadedModel, *, force: bool) -> str:
        try:
            await asyncio.to_thread(self.model_host.unload, model.name)
        except KeyError:
            raise RuntimeAdapterError(f"{self.name}: {model.name} is not loaded") from None
        return f"unloaded {model.name} ({self.name})"

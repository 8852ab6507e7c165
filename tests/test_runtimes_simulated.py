"""The simulated adapter over the simulated backend's models."""

from __future__ import annotations

import pytest

from gpufleet.server.gpu.simulated import SimulatedBackend
from gpufleet.server.runtimes import RuntimeAdapterError, SimulatedAdapter


async def test_lists_and_unloads_the_hosts_models(fixed_clock):
    backend = SimulatedBackend(clock=fixed_clock)
    adapter = SimulatedAdapter(backend)
    models = await adapter.list_models()
    assert models and all(m.memory_mb and m.gpu_index is not None for m in models)
    before = sum(g.memory.used_mb for g in backend.snapshot().gpus)
    target = models[0]
    assert await adapter.unload(target, force=True) == f"unloaded {target.name} (simulated)"
    assert target.name not in {m.name for m in await adapter.list_models()}
    assert sum(g.memory.used_mb for g in backend.snapshot().gpus) < before


async def test_unloading_a_model_that_is_not_loaded_is_a_clear_error(fixed_clock):
    adapter = SimulatedAdapter(SimulatedBackend(clock=fixed_clock))
    (target, *_) = await adapter.list_models()
    await adapter.unload(target, force=True)
    with pytest.raises(RuntimeAdapterError, match=f"simulated: {target.name} is not loaded"):
        await adapter.unload(target, force=True)

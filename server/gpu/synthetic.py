"""Synthetic nodes (sim-node-NNN) added to the described fleet, for demos and scale tests."""

from __future__ import annotations

import random
from typing import get_args

from gpufleet.server.fleet import Fleet, JobSpec, NodeSpec, Schedule
from gpufleet.server.gpu.load import mix

SYNTHETIC_PREFIX = "sim-node-"
# How often each GPU model shows up on synthetic nodes (models missing from the fleet are skipped).
_GPU_WEIGHTS = {"A100": 4, "H100": 4, "L40S": 2, "L4": 1}
_SCHEDULERS = ("kubernetes", "slurm", "runai", "manual")
_IDLE_CHANCE = 0.15  # some GPUs hold nothing: a fleet is never fully allocated
RESERVE_MB = 2048  # a model is placed only where it leaves this much room


def synthetic_node_name(number: int) -> str:
    return f"{SYNTHETIC_PREFIX}{number:03d}"


def extend_fleet(fleet: Fleet, synthetic: int, gpus_per_node: int | None = None) -> Fleet:
    """The fleet plus ``synthetic`` seeded nodes with mixed GPUs, models and job schedules."""
    if synthetic <= 0:
        return fleet
    nodes = list(fleet.nodes)
    jobs = list(fleet.jobs)
    archs = [a for a in sorted(fleet.gpu_models) if a in _GPU_WEIGHTS] or sorted(fleet.gpu_models)
    weights = [_GPU_WEIGHTS.get(a, 1) for a in archs]
    schedules: tuple[str, ...] = get_args(Schedule)
    for number in range(1, synthetic + 1):
        rng = random.Random(mix(fleet.seed, number))
        arch = rng.choices(archs, weights)[0]
        count = gpus_per_node or (2 if arch == "L4" else rng.choice((4, 8, 8)))
        name = synthetic_node_name(number)
        nodes.append(NodeSpec(name=name, gpus=[arch] * count))
        fits = [m for m in fleet.models
                if m.memory_mb + RESERVE_MB <= fleet.gpu_models[arch].memory_mb]
        index = 0
        while index < count:
            size = min(rng.choice((1, 1, 2, 4)), count - index)
            if fits and rng.random() >= _IDLE_CHANCE:
                jobs.append(JobSpec(
                    node=name,
                    gpus=list(range(index, index + size)),
                    model=rng.choice(fits).name,
                    scheduler=rng.choice(_SCHEDULERS),
                    schedule=rng.choice(schedules),
                ))
            index += size
    return fleet.model_copy(update={"nodes": nodes, "jobs": jobs})

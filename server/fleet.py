"""The described fleet in sample_data/fleet.toml: the simulator's and the sample telemetry's source."""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

Schedule = Literal["continuous", "business_hours", "nightly", "adhoc"]


def sample_data_dir() -> Path:
    """The ``sample_data`` package's folder: sample_data/ of a checkout, or the installed copy."""
    from gpufleet import sample_data

    return Path(sample_data.__file__).resolve().parent


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GpuModelSpec(_Frozen):
    name: str
    memory_mb: int
    power_limit_w: float
    idle_power_w: float
    sm_clock_max_mhz: int
    memory_clock_mhz: int


class NodeSpec(_Frozen):
    name: str
    gpus: list[str]  # keys of Fleet.gpu_models, in index order


class ModelSpec(_Frozen):
    name: str
    team: str
    memory_mb: int
    runtime: str


class JobSpec(_Frozen):
    node: str
    gpus: list[int]
    model: str
    scheduler: Literal["kubernetes", "slurm", "runai", "manual"]
    schedule: Schedule


class Fleet(_Frozen):
    seed: int
    local_node: str
    gpu_models: dict[str, GpuModelSpec]
    nodes: list[NodeSpec]
    models: list[ModelSpec]
    jobs: list[JobSpec]

    @model_validator(mode="after")
    def _consistent(self) -> Fleet:
        nodes = {n.name: n for n in self.nodes}
        models = {m.name for m in self.models}
        if self.local_node not in nodes:
            raise ValueError(f"local_node {self.local_node!r} is not a node")
        for node in self.nodes:
            for arch in node.gpus:
                if arch not in self.gpu_models:
                    raise ValueError(f"node {node.name}: unknown GPU model {arch!r}")
        for job in self.jobs:
            if job.node not in nodes:
                raise ValueError(f"job on unknown node {job.node!r}")
            if job.model not in models:
                raise ValueError(f"job runs unknown model {job.model!r}")
            if any(i < 0 or i >= len(nodes[job.node].gpus) for i in job.gpus):
                raise ValueError(f"job {job.model} on {job.node}: GPU index out of range")
        return self

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def model(self, name: str) -> ModelSpec:
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(name)

    def job_for(self, node: str, gpu_index: int) -> JobSpec | None:
        for job in self.jobs:
            if job.node == node and gpu_index in job.gpus:
                return job
        return None

    def jobs_for(self, node: str, gpu_index: int) -> list[JobSpec]:
        """Every job on one GPU: several share it (an Ollama node serving two teams' models)."""
        return [job for job in self.jobs if job.node == node and gpu_index in job.gpus]


def load_fleet(path: Path | None = None) -> Fleet:
    path = path or sample_data_dir() / "fleet.toml"
    return Fleet.model_validate(tomllib.loads(path.read_text()))


@cache
def default_fleet() -> Fleet:
    return load_fleet()

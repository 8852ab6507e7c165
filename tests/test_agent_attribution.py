"""Attribution: config rules, then a process's Slurm / Kubernetes / Run:ai facts, then defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from gpufleet.server.agent.attribution import (
    ProcessAttributor,
    ProcessReader,
    facts_to_fields,
    pod_uid_from_cgroup,
)
from gpufleet.server.agent.sampler import Sampler
from gpufleet.server.config import AgentSettings, AttributionRule
from gpufleet.server.gpu.nvml import NvmlBackend

POD_UID = "0d6f5d4e-9c1b-4a8e-8f5e-3c2b1a0f9e8d"


@pytest.fixture
def slurm_child():
    env = dict(os.environ, SLURM_JOB_ID="4242", SLURM_JOB_ACCOUNT="nlp-research",
               GPUFLEET_MODEL_TAG="llama3-70b-finetune")
    child = subprocess.Popen([sys.executable, "-c", "import sys; print(flush=True); sys.stdin.read()"],
                             env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    # /proc shows the job's environment only once the child has exec'd: wait for its line
    assert child.stdout is not None and child.stdout.readline() == b"\n"
    yield child
    child.stdin.close()
    child.wait(timeout=10)


def node_with(fake: ModuleType, pids_by_gpu: dict[int, int]) -> NvmlBackend:
    fake.configure([
        fake.FakeGpu(uuid=f"GPU-{i}", compute_processes=[fake.FakeProcess(pid, 1000)]
                     if (pid := pids_by_gpu.get(i)) else [])
        for i in range(3)
    ])
    return NvmlBackend(fake)


def test_a_slurm_jobs_environment_attributes_its_gpu(fake_nvml, slurm_child) -> None:
    backend = node_with(fake_nvml, {1: slurm_child.pid})
    samples = {s["gpu_index"]: s for s in Sampler(backend, ProcessAttributor(AgentSettings())).sample()}
    assert samples[1]["job_id"] == "4242"
    assert samples[1]["team_id"] == "nlp-research"
    assert samples[1]["model_tag"] == "llama3-70b-finetune"
    assert samples[1]["scheduler_source"] == "slurm"
    assert samples[0]["scheduler_source"] == "manual"  # an idle GPU: the defaults
    assert "job_id" not in samples[0]


def test_a_rule_wins_over_the_environment_field_by_field(fake_nvml, slurm_child) -> None:
    settings = AgentSettings(rules=[
        AttributionRule(gpu_index=0, team_id="never-matches-gpu-1"),
        AttributionRule(process_name="pyth*", team_id="platform"),
    ], default_model_tag="unlabelled")
    backend = node_with(fake_nvml, {1: slurm_child.pid})
    found = ProcessAttributor(settings).attribute(backend.snapshot())
    assert found[1] == {"team_id": "platform", "job_id": "4242", "scheduler_source": "slurm",
                        "model_tag": "llama3-70b-finetune"}
    assert found[0] == {"team_id": "never-matches-gpu-1", "model_tag": "unlabelled",
                        "scheduler_source": "manual"}


def fake_proc(root: Path, pid: int, *, environ: dict[str, str], cgroup: str, labels: str | None) -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "environ").write_bytes(b"\0".join(f"{k}={v}".encode() for k, v in environ.items()) + b"\0")
    (d / "cgroup").write_text(cgroup)
    (d / "stat").write_text(f"{pid} (python x) S " + " ".join(["0"] * 18) + " 777 0\n")
    if labels is not None:
        (d / "root/etc/podinfo").mkdir(parents=True)
        (d / "root/etc/podinfo/labels").write_text(labels)


def test_a_kubernetes_pod_gives_its_uid_and_labels(tmp_path: Path) -> None:
    cgroup = f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_UID.replace('-', '_')}.slice/cri-containerd-ab12.scope\n"
    fake_proc(tmp_path, 77, environ={"KUBERNETES_SERVICE_HOST": "10.0.0.1", "POD_NAMESPACE": "vision"},
              cgroup=cgroup, labels='app="trainer"\nteam="vision-team"\nmodel="sam2"\n')
    settings = AgentSettings()
    facts = ProcessReader(settings, proc_root=tmp_path).facts(77)
    assert facts.namespace == "vision"
    assert facts_to_fields(facts, settings) == {
        "scheduler_source": "kubernetes", "job_id": POD_UID, "team_id": "vision-team", "model_tag": "sam2",
    }


def test_run_ai_and_cgroup_v1_and_unreadable_processes(tmp_path: Path) -> None:
    assert pod_uid_from_cgroup(f"11:memory:/kubepods/besteffort/pod{POD_UID}/cafe\n") == POD_UID
    fake_proc(tmp_path, 88, environ={"RUNAI_JOB_NAME": "train-7", "RUNAI_PROJECT": "speech"},
              cgroup="0::/\n", labels=None)
    settings = AgentSettings()
    reader = ProcessReader(settings, proc_root=tmp_path)
    assert facts_to_fields(reader.facts(88), settings) == {
        "scheduler_source": "runai", "job_id": "train-7", "team_id": "speech",
    }
    # A PID that vanished or belongs to another user: no facts, no exception.
    assert facts_to_fields(reader.facts(99_999_999), settings) == {}

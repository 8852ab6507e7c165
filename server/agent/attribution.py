"""Who a GPU works for: config rules, then the environment and cgroup of its processes, then defaults."""

from __future__ import annotations

import fnmatch
import logging
import os
import pwd
import re
from dataclasses import dataclass, field
from pathlib import Path

from gpufleet.server.config import AgentSettings, AttributionRule
from gpufleet.server.gpu.base import GpuSnapshot
from gpufleet.server.schemas import GpuInfo, GpuProcess

log = logging.getLogger("gpufleet.agent")

FIELDS = ("job_id", "team_id", "model_tag", "scheduler_source")
# cgroup v1 ".../kubepods/burstable/pod<uid>/<container>" and the systemd driver's
# ".../kubepods-burstable-pod<uid with _>.slice/..." both carry the pod UID.
_POD_UID = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
_SERVICE_ACCOUNT_NAMESPACE = "var/run/secrets/kubernetes.io/serviceaccount/namespace"


@dataclass(frozen=True, slots=True)
class ProcessFacts:
    """What one process tells about its workload; every part may be missing."""

    env: dict[str, str] = field(default_factory=dict)
    pod_uid: str | None = None
    namespace: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    user: str | None = None


def parse_environ(raw: bytes) -> dict[str, str]:
    env: dict[str, str] = {}
    for entry in raw.split(b"\0"):
        name, sep, value = entry.partition(b"=")
        if sep and name:
            env[name.decode(errors="replace")] = value.decode(errors="replace")
    return env


def pod_uid_from_cgroup(text: str) -> str | None:
    match = _POD_UID.search(text)
    return match.group(1).replace("_", "-") if match else None


def parse_downward_labels(text: str) -> dict[str, str]:
    """The Kubernetes downward-API labels file: one ``key="value"`` a line."""
    labels: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            labels[key.strip()] = value.strip().strip('"')
    return labels


class ProcessReader:
    """Reads /proc/PID: environ, cgroup, the pod's labels file; anything unreadable is skipped."""

    def __init__(self, settings: AgentSettings, *, proc_root: Path = Path("/proc")) -> None:
        self._settings = settings
        self._proc = proc_root
        self._cache: dict[int, tuple[str | None, ProcessFacts]] = {}

    def facts(self, pid: int) -> ProcessFacts:
        """Facts of ``pid``, cached until the PID is reused (its start time changes)."""
        started = self._start_time(pid)
        cached = self._cache.get(pid)
        if cached is not None and cached[0] == started:
            return cached[1]
        facts = self._read(pid)
        self._cache[pid] = (started, facts)
        return facts

    def forget_except(self, pids: set[int]) -> None:
        for pid in list(self._cache):
            if pid not in pids:
                del self._cache[pid]

    def _start_time(self, pid: int) -> str | None:
        stat = self._read_text(pid, "stat")
        if stat is None:
            return None
        # Field 22 after the parenthesised command name, which may hold spaces.
        rest = stat.rpartition(")")[2].split()
        return rest[19] if len(rest) > 19 else None

    def _read(self, pid: int) -> ProcessFacts:
        raw = self._read_bytes(pid, "environ")
        env = parse_environ(raw) if raw else {}
        cgroup = self._read_text(pid, "cgroup") or ""
        pod_uid = pod_uid_from_cgroup(cgroup)
        namespace = env.get("POD_NAMESPACE")
        labels: dict[str, str] = {}
        if pod_uid or "KUBERNETES_SERVICE_HOST" in env:
            if namespace is None:
                namespace = (self._read_text(pid, f"root/{_SERVICE_ACCOUNT_NAMESPACE}") or "").strip() or None
            labels_file = self._settings.pod_labels_file.lstrip("/")
            labels = parse_downward_labels(self._read_text(pid, f"root/{labels_file}") or "")
        return ProcessFacts(env=env, pod_uid=pod_uid, namespace=namespace, labels=labels, user=self._owner(pid))

    def _owner(self, pid: int) -> str | None:
        try:
            return pwd.getpwuid(os.stat(self._proc / str(pid)).st_uid).pw_name
        except (OSError, KeyError):
            return None

    def _read_bytes(self, pid: int, name: str) -> bytes | None:
        try:
            return (self._proc / str(pid) / name).read_bytes()
        except OSError:  # gone, or another user's: attribution is best effort
            return None

    def _read_text(self, pid: int, name: str) -> str | None:
        raw = self._read_bytes(pid, name)
        return raw.decode(errors="replace") if raw is not None else None


def facts_to_fields(facts: ProcessFacts, settings: AgentSettings) -> dict[str, str]:
    """The attribution one process's environment and cgroup give, scheduler by scheduler."""
    env = facts.env
    found: dict[str, str] = {}
    if any(name.startswith("RUNAI_") for name in env):
        found["scheduler_source"] = "runai"
        job = env.get("RUNAI_JOB_NAME") or env.get("RUNAI_JOB_UUID") or facts.pod_uid
        if job:
            found["job_id"] = job
    elif "SLURM_JOB_ID" in env:
        found["scheduler_source"] = "slurm"
        found["job_id"] = env["SLURM_JOB_ID"]
    elif facts.pod_uid or "KUBERNETES_SERVICE_HOST" in env:
        found["scheduler_source"] = "kubernetes"
        job = facts.pod_uid or env.get("POD_UID")
        if job:
            found["job_id"] = job
    team = _first(env, settings.team_env) or facts.labels.get(settings.team_label)
    if team is None and settings.namespace_as_team and facts.namespace:
        team = facts.namespace
    model = _first(env, settings.model_env) or facts.labels.get(settings.model_label)
    if team:
        found["team_id"] = team
    if model:
        found["model_tag"] = model
    return found


def _first(env: dict[str, str], names: list[str]) -> str | None:
    for name in names:
        if env.get(name):
            return env[name]
    return None


@dataclass(frozen=True, slots=True)
class WorkloadShare:
    """One workload on a GPU: its attribution, and its share of the GPU when it shares it."""

    fields: dict[str, str]  # any of job_id, team_id, model_tag, scheduler_source
    fraction: float | None = None  # None: the only workload, or no basis to split by
    basis: str | None = None  # "sm_utilization" or "memory": what fraction was measured by


FRACTION_DIGITS = 4


def workload_fractions(groups: list[list[GpuProcess]]) -> tuple[list[float | None], str | None]:
    """Each group's share of its GPU, and the basis: per-process SM utilization (NVML's
    process utilization samples) when the driver gives it and the GPU was busy, else each
    group's share of the GPU memory its processes hold; none when neither is known.

    Rounded to 4 digits, never adding up to more than 1; a share that rounds to 0 is
    None (the server gives such a row what the others leave: nothing, or next to it).
    """
    for basis, value in (("sm_utilization", lambda p: p.sm_util_pct), ("memory", lambda p: p.memory_mb)):
        if not any(value(p) is not None for g in groups for p in g):
            continue
        totals = [float(sum(value(p) or 0 for p in g)) for g in groups]
        whole = sum(totals)
        if whole <= 0:
            continue
        shares = [round(t / whole, FRACTION_DIGITS) for t in totals]
        excess = round(sum(shares) - 1, FRACTION_DIGITS)
        if excess > 0:  # 0.3334 x 3: the largest gives up the rounding
            top = shares.index(max(shares))
            shares[top] = round(shares[top] - excess, FRACTION_DIGITS)
        return [s if s > 0 else None for s in shares], basis
    return [None] * len(groups), None


def group_workloads(processes: list[GpuProcess], specific: list[dict[str, str]],
                    fallbacks: list[dict[str, str]]) -> list[WorkloadShare]:
    """A GPU's workloads from its processes (largest memory first) and what each one says
    about itself (``specific``: rules, scheduler facts, the process's own tags).

    Processes that agree (no field with two values) are one workload; processes that say
    nothing count with the largest workload; ``fallbacks`` (the GPU's own tags, then the
    defaults) fill what a workload leaves open. Several workloads get their fractions.
    """
    groups: list[tuple[dict[str, str], list[GpuProcess]]] = []
    unknown: list[GpuProcess] = []
    for process, fields in zip(processes, specific, strict=True):
        if not fields:
            unknown.append(process)
            continue
        for merged, members in groups:
            if all(merged.get(k, v) == v for k, v in fields.items()):
                for k, v in fields.items():
                    merged.setdefault(k, v)
                members.append(process)
                break
        else:
            groups.append((dict(fields), [process]))
    if not groups:
        groups.append(({}, []))
    groups[0][1].extend(unknown)
    # filled in, two workloads may name the same job, team and model: the server's identity
    workloads: dict[tuple[str, str, str], tuple[dict[str, str], list[GpuProcess]]] = {}
    for fields, members in groups:
        for fallback in fallbacks:
            for k, v in fallback.items():
                fields.setdefault(k, v)
        identity = (fields.get("job_id", ""), fields.get("team_id", ""), fields.get("model_tag", ""))
        if identity in workloads:
            workloads[identity][1].extend(members)
        else:
            workloads[identity] = (fields, members)
    if len(workloads) == 1:
        return [WorkloadShare(next(iter(workloads.values()))[0])]
    fractions, basis = workload_fractions([members for _fields, members in workloads.values()])
    return [WorkloadShare(fields, fraction, basis if fraction is not None else None)
            for (fields, _members), fraction in zip(workloads.values(), fractions, strict=True)]


def process_tags(process: GpuProcess) -> dict[str, str]:
    """The team and model a backend knows a process by (the simulated fleet does)."""
    return {k: v for k, v in (("team_id", process.team_id), ("model_tag", process.model_tag)) if v}


def gpu_tags(gpu: GpuInfo) -> dict[str, str]:
    return {k: v for k, v in (("team_id", gpu.team_id), ("model_tag", gpu.model_tag)) if v}


class ProcessAttributor:
    """Attributes each GPU of a snapshot; the Sampler's ``attributor``."""

    def __init__(self, settings: AgentSettings, *, reader: ProcessReader | None = None) -> None:
        self._settings = settings
        self._reader = reader or ProcessReader(settings)

    def attribute(self, snapshot: GpuSnapshot) -> dict[int, dict[str, str]]:
        by_gpu: dict[int, list[GpuProcess]] = {}
        for process in snapshot.processes:
            if process.gpu_index is not None:
                by_gpu.setdefault(process.gpu_index, []).append(process)
        result: dict[int, dict[str, str]] = {}
        for gpu in snapshot.gpus:
            # The process holding the most memory speaks first.
            processes = sorted(by_gpu.get(gpu.index, []), key=lambda p: -(p.memory_mb or 0))
            # a simulated node's PIDs are made up: /proc/PID would be some unrelated process
            real = not snapshot.node.simulated
            facts = [self._reader.facts(p.pid) if p.visible and real else ProcessFacts()
                     for p in processes]
            sources: list[dict[str, str]] = []
            rule = self._matching_rule(gpu.index, processes, facts)
            if rule is not None:
                sources.append({k: v for k in FIELDS if (v := getattr(rule, k))})
            sources.extend(facts_to_fields(f, self._settings) for f in facts)
            sources.append({k: v for k, v in (("team_id", gpu.team_id), ("model_tag", gpu.model_tag)) if v})
            sources.append(self._defaults())
            merged: dict[str, str] = {}
            for source in sources:
                for key, value in source.items():
                    merged.setdefault(key, value)
            result[gpu.index] = merged
        self._reader.forget_except({p.pid for p in snapshot.processes})
        return result

    def workloads(self, snapshot: GpuSnapshot) -> dict[int, list[WorkloadShare]]:
        """Per GPU index, its workloads: one per distinct attribution among its processes
        (rules matched by that process, then its scheduler facts, then its own tags), each
        with its fraction of the GPU when there are several (``group_workloads``)."""
        by_gpu: dict[int, list[GpuProcess]] = {}
        for process in snapshot.processes:
            if process.gpu_index is not None:
                by_gpu.setdefault(process.gpu_index, []).append(process)
        real = not snapshot.node.simulated
        result: dict[int, list[WorkloadShare]] = {}
        for gpu in snapshot.gpus:
            processes = sorted(by_gpu.get(gpu.index, []), key=lambda p: -(p.memory_mb or 0))
            specific = []
            for process in processes:
                facts = self._reader.facts(process.pid) if process.visible and real else ProcessFacts()
                fields: dict[str, str] = {}
                rule = self._matching_rule(gpu.index, [process], [facts])
                sources = [{k: v for k in FIELDS if (v := getattr(rule, k))} if rule else {},
                           facts_to_fields(facts, self._settings), process_tags(process)]
                for source in sources:
                    for key, value in source.items():
                        fields.setdefault(key, value)
                specific.append(fields)
            fallbacks = [gpu_tags(gpu), self._defaults()]
            if not processes:
                rule = self._matching_rule(gpu.index, [], [])
                if rule is not None:
                    fallbacks.insert(0, {k: v for k in FIELDS if (v := getattr(rule, k))})
            result[gpu.index] = group_workloads(processes, specific, fallbacks)
        self._reader.forget_except({p.pid for p in snapshot.processes})
        return result

    def _matching_rule(
        self, gpu_index: int, processes: list[GpuProcess], facts: list[ProcessFacts]
    ) -> AttributionRule | None:
        for rule in self._settings.rules:
            if rule.gpu_index is not None and rule.gpu_index != gpu_index:
                continue
            if rule.process_name is not None and not any(
                _name_matches(rule.process_name, p.name) for p in processes
            ):
                continue
            if rule.user is not None and not any(
                (p.user or f.user) == rule.user for p, f in zip(processes, facts, strict=True)
            ):
                continue
            return rule
        return None

    def _defaults(self) -> dict[str, str]:
        s = self._settings
        defaults = {"team_id": s.default_team_id, "model_tag": s.default_model_tag,
                    "scheduler_source": s.default_scheduler_source}
        return {k: v for k, v in defaults.items() if v}


def _name_matches(pattern: str, name: str) -> bool:
    """A rule's process name matches the full name or its basename, shell wildcards allowed."""
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(os.path.basename(name), pattern)

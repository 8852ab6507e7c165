"""Pydantic models of every request and response body gpufleet speaks.

Field names, nesting and units follow the two API documents in shared/seeds
exactly; gpufleet's own fields are additive and optional. This module imports
only pydantic and the standard library: it is the one contract between the
console, the server, the agent and the SDK.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StrictInt,
)

MIB_PER_GIB = 1024


def utc_now() -> datetime:
    return datetime.now(UTC)


def _as_utc(value: Any) -> Any:
    """A datetime in UTC (naive taken as UTC); ValueError when UTC cannot hold it.

    ``0001-01-01T00:30:00+01:00`` or ``9999-12-31T23:30:00-01:00`` lie outside
    datetime's range once in UTC: as a validator that must be a validation error
    (a 400), never the OverflowError that would make a 500.
    """
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValueError("timestamp is out of range once converted to UTC") from None
    return value


def format_utc(value: datetime, *, millis: bool = False) -> str:
    """ISO-8601 in UTC with a trailing ``Z``, as the documents write timestamps."""
    value = _as_utc(value)
    if millis:
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


# A UTC instant, serialised as "2025-01-29T12:00:00Z". The validator runs after
# parsing so that text with an offset ("...+01:00") is converted to UTC as well.
UtcDateTime = Annotated[
    datetime,
    AfterValidator(_as_utc),
    PlainSerializer(lambda v: format_utc(v), return_type=str, when_used="json-unless-none"),
]
# The same with milliseconds, as chargeback's generated_at: "2026-04-01T09:00:00.000Z".
UtcDateTimeMillis = Annotated[
    datetime,
    AfterValidator(_as_utc),
    PlainSerializer(lambda v: format_utc(v, millis=True), return_type=str, when_used="json-unless-none"),
]


def mb_to_gb(mb: float) -> float:
    """MiB to GiB rounded to one decimal, as the documents derive ``*_gb`` from ``*_mb``."""
    return round(mb / MIB_PER_GIB, 1)


def percent(part: float, whole: float) -> float:
    return round(100.0 * part / whole, 1) if whole else 0.0


class Value(BaseModel):
    """A value object: immutable, and tolerant of fields a newer peer adds."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class ErrorBody(Value):
    error: str


# --------------------------------------------------------------------------
# Operator GPU API (seed 000): /v1/gpu/status, /v1/gpu/memory, /v1/gpu/purge
# --------------------------------------------------------------------------


class GpuMemory(Value):
    total_mb: int
    used_mb: int
    free_mb: int
    total_gb: float
    used_gb: float
    free_gb: float
    percent_used: float

    @classmethod
    def from_mb(cls, total_mb: int, used_mb: int, free_mb: int | None = None) -> GpuMemory:
        free = total_mb - used_mb if free_mb is None else free_mb
        return cls(
            total_mb=total_mb,
            used_mb=used_mb,
            free_mb=free,
            total_gb=mb_to_gb(total_mb),
            used_gb=mb_to_gb(used_mb),
            free_gb=mb_to_gb(free),
            percent_used=percent(used_mb, total_mb),
        )


class GpuUtilization(Value):
    gpu_percent: int | None = None
    memory_percent: int | None = None


class MigDevice(Value):
    """A MIG instance of a GPU whose MIG mode is on (additive)."""

    index: int
    uuid: str | None = None
    name: str | None = None
    memory_total_mb: int | None = None
    memory_used_mb: int | None = None


class GpuInfo(Value):
    index: int
    name: str
    memory: GpuMemory
    utilization: GpuUtilization
    temperature_c: int | None = None
    # additive: everything a fleet console and the agent need; None = unsupported
    uuid: str | None = None
    power_draw_w: float | None = None
    power_limit_w: float | None = None
    energy_j: float | None = None  # total-energy counter since driver load, joules
    fan_speed_pct: int | None = None
    sm_clock_mhz: int | None = None
    memory_clock_mhz: int | None = None
    pstate: str | None = None  # "P0".."P15"
    mig_mode: bool | None = None
    mig_devices: list[MigDevice] = Field(default_factory=list)
    team_id: str | None = None  # who holds this GPU, when known
    model_tag: str | None = None
    lost: bool = False  # the driver reports "GPU is lost": every reading is None


class GpuProcess(Value):
    pid: int
    name: str
    memory_mb: int | None = None
    # additive
    gpu_index: int | None = None
    user: str | None = None
    command: str | None = None
    type: Literal["compute", "graphics"] | None = None
    # shared GPUs: this process's SM utilization on this GPU, the average of NVML's process
    # utilization samples since the last snapshot (None: the driver gives none)
    sm_util_pct: int | None = None
    team_id: str | None = None  # whose process it is, when the backend knows (simulated)
    model_tag: str | None = None
    visible: bool = True  # False: the driver reports the PID but this host cannot see it


class NodeInfo(Value):
    """Whose GPUs these are and whether they are real (additive, top level)."""

    hostname: str
    driver_version: str | None = None
    cuda_version: str | None = None
    nvml_version: str | None = None
    simulated: bool
    backend: Literal["nvml", "simulated"]
    gpufleet_version: str | None = None


class LoadedModel(Value):
    """A model a runtime holds on this node, as a purge would see it (additive)."""

    name: str
    runtime: str  # ollama | triton | process | simulated
    gpu_index: int | None = None  # the first GPU it occupies
    memory_mb: int | None = None
    in_use: bool = False
    gpu_indices: list[int] | None = None  # every GPU it occupies, when known

    def occupies(self, indices: AbstractSet[int]) -> bool:
        """Whether the model sits on any of these GPUs (False when its GPUs are unknown)."""
        held = self.gpu_indices if self.gpu_indices else (
            [self.gpu_index] if self.gpu_index is not None else [])
        return any(i in indices for i in held)


class GpuStatusResponse(Value):
    status: Literal["success"] = "success"
    timestamp: UtcDateTime
    gpus: list[GpuInfo]
    processes: list[GpuProcess]
    total_gpus: int
    # additive
    node: NodeInfo | None = None
    models: list[LoadedModel] | None = None


class GpuMemoryEntry(Value):
    total_gb: float
    used_gb: float
    free_gb: float
    percent_used: float
    percent_free: float
    # additive
    index: int | None = None
    uuid: str | None = None
    name: str | None = None

    @classmethod
    def from_memory(cls, mem: GpuMemory, *, index: int | None = None, uuid: str | None = None,
                    name: str | None = None) -> GpuMemoryEntry:
        return cls(
            total_gb=mem.total_gb,
            used_gb=mem.used_gb,
            free_gb=mem.free_gb,
            percent_used=mem.percent_used,
            percent_free=round(100.0 - mem.percent_used, 1) if mem.total_mb else 0.0,
            index=index,
            uuid=uuid,
            name=name,
        )


class GpuMemoryResponse(Value):
    status: Literal["success"] = "success"
    timestamp: UtcDateTime
    memory: list[GpuMemoryEntry]
    node: NodeInfo | None = None


class PurgeRequest(Value):
    force: StrictBool = False  # true only for a JSON true: force may SIGKILL busy processes
    # additive: limit the purge to some GPUs; an empty list would purge nothing
    gpu_indices: Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(min_length=1)] | None = None


class MemorySummary(Value):
    used_gb: float
    total_gb: float
    percent_used: float


class PurgeResult(Value):
    status: Literal["success", "partial", "error"] = "success"
    timestamp: UtcDateTime
    actions: list[str]
    memory_before: MemorySummary
    memory_after: MemorySummary
    memory_freed_gb: float
    models_unloaded: list[str]
    errors: list[str]
    recommendation: str
    # additive
    node: NodeInfo | None = None
    skipped: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------
# Metrics ingest (seed 004): /v1/metrics/ingest, /v1/agent/heartbeat
# --------------------------------------------------------------------------

SchedulerSource = Literal["kubernetes", "slurm", "runai", "manual"]
GpuFractionBasis = Literal["sm_utilization", "memory"]
GPU_FRACTION_TEXT = (
    "This workload's share of the GPU at this timestamp, in (0, 1]. The samples of one GPU "
    "at one timestamp (one per workload) may add up to at most 1 (1.01 is allowed for "
    "rounding and billed as 1); more, in one batch or with samples stored before, makes the "
    "whole batch a 400 naming the GPU and the time. Samples without it share what the "
    "others leave, equally; a lone sample without it is the whole GPU; a remainder no "
    "sample claims is billed to no team (unattributed). GPU-hours, energy, idle GPU-hours "
    "and cost of the interval are split by these shares."
)
GPU_FRACTION_BASIS_TEXT = (
    "How gpu_fraction was measured: sm_utilization (the workload's processes' share of "
    "the SM utilization NVML sampled over the interval) or memory (their share of the GPU "
    "memory in use)."
)

REQUIRED_SAMPLE_FIELDS: tuple[str, ...] = (
    "timestamp",
    "gpu_index",
    "gpu_uuid",
    "power_draw_w",
    "utilization_gpu_pct",
    "utilization_memory_pct",
    "temperature_c",
    "memory_used_mb",
)
OPTIONAL_SAMPLE_FIELDS: tuple[str, ...] = (
    "gpu_name",
    "power_limit_w",
    "energy_delta_j",
    "fan_speed_pct",
    "memory_total_mb",
    "sm_clock_mhz",
    "memory_clock_mhz",
    "job_id",
    "team_id",
    "model_tag",
    "scheduler_source",
    # additive
    "gpu_fraction",
    "gpu_fraction_basis",
)


class MetricSample(Value):
    """One GPU reading as the agent posts it. Ranges are the documented ones.

    A sample's identity is (account, gpu_uuid, timestamp, workload), the workload being
    its job_id, team_id and model_tag (absent parts count as empty): the same identity
    again is a duplicate, stored once. A shared GPU sends one sample per workload at the
    same timestamp; they are one reading of the GPU split across the workloads by
    gpu_fraction (see its description).
    """

    timestamp: UtcDateTime
    gpu_index: Annotated[int, Field(ge=0, le=2**31 - 1)]  # stored as INTEGER
    gpu_uuid: Annotated[str, Field(min_length=1)]
    power_draw_w: Annotated[float, Field(ge=0, le=1500)]
    utilization_gpu_pct: Annotated[float, Field(ge=0, le=100)]
    utilization_memory_pct: Annotated[float, Field(ge=0, le=100)]
    temperature_c: Annotated[float, Field(ge=0, le=120)]
    memory_used_mb: Annotated[float, Field(ge=0)]
    gpu_name: str | None = None
    power_limit_w: Annotated[float, Field(ge=0)] | None = None
    energy_delta_j: Annotated[float, Field(ge=0)] | None = None
    fan_speed_pct: Annotated[float, Field(ge=0, le=100)] | None = None
    memory_total_mb: Annotated[float, Field(ge=0)] | None = None
    sm_clock_mhz: Annotated[float, Field(ge=0)] | None = None
    memory_clock_mhz: Annotated[float, Field(ge=0)] | None = None
    job_id: str | None = None
    team_id: Annotated[str, Field(max_length=128)] | None = None
    model_tag: Annotated[str, Field(max_length=128)] | None = None
    scheduler_source: SchedulerSource | None = None
    # additive: shared GPUs
    gpu_fraction: Annotated[float, Field(gt=0, le=1)] | None = Field(default=None, description=GPU_FRACTION_TEXT)
    gpu_fraction_basis: GpuFractionBasis | None = Field(default=None, description=GPU_FRACTION_BASIS_TEXT)


class IngestResult(Value):
    success: bool
    inserted: int
    message: str
    duplicates: int = 0  # additive: samples already stored, not stored again


class IngestHealth(Value):
    status: Literal["ok"] = "ok"
    endpoint: str = "GPU Metrics Ingestion API"
    methods: list[str] = Field(default_factory=lambda: ["POST"])
    documentation: str = "https://github.com/gpufleet/gpufleet#api"


class Heartbeat(Value):
    agent_version: Annotated[str, Field(min_length=1, max_length=64)]
    gpu_count: Annotated[int, Field(ge=0, le=1024)]
    hostname: Annotated[str, Field(min_length=1, max_length=255)]


class HeartbeatResult(Value):
    success: bool = True
    hostname: str
    received_at: UtcDateTime


HostStatus = Literal["alive", "stale", "offline"]


class HostInfo(Value):
    hostname: str
    agent_version: str
    gpu_count: int
    first_heartbeat: UtcDateTime
    last_heartbeat: UtcDateTime
    last_sample_at: UtcDateTime | None = None
    status: HostStatus


class HostsResponse(Value):
    generated_at: UtcDateTime
    heartbeat_interval_s: int
    hosts: list[HostInfo]


# --------------------------------------------------------------------------
# Chargeback (seed 004): /v1/chargeback/report
# --------------------------------------------------------------------------


SHARED_GPU_HOURS_TEXT = (
    "The part of gpu_hours billed as a share of a shared GPU: time when several workloads "
    "were sampled on one GPU at once (or one with a gpu_fraction below 1), each billed its "
    "share. Already included in gpu_hours, never added to it."
)


class ReportPeriod(Value):
    from_: date = Field(alias="from")
    to: date


class ReportSummary(Value):
    total_cost_usd: float
    total_gpu_hours: float
    # additive
    energy_kwh: float = 0.0
    energy_cost_usd: float = 0.0
    idle_gpu_hours: float = 0.0
    shared_gpu_hours: float = Field(default=0.0, description=SHARED_GPU_HOURS_TEXT)


class GpuArchUsage(Value):
    gpu_arch: str
    gpu_hours: float
    rate: float  # $/GPU-hour
    cost_usd: float
    # additive
    energy_kwh: float = 0.0
    idle_gpu_hours: float = 0.0
    shared_gpu_hours: float = Field(default=0.0, description=SHARED_GPU_HOURS_TEXT)


class ModelUsage(Value):
    model_tag: str
    gpu_hours: float
    cost_usd: float
    # additive
    energy_kwh: float = 0.0
    shared_gpu_hours: float = Field(default=0.0, description=SHARED_GPU_HOURS_TEXT)


class TeamUsage(Value):
    team_id: str
    total_cost_usd: float
    total_gpu_hours: float
    by_gpu: list[GpuArchUsage]
    by_model: list[ModelUsage]
    # additive
    energy_kwh: float = 0.0
    energy_cost_usd: float = 0.0
    idle_gpu_hours: float = 0.0
    shared_gpu_hours: float = Field(default=0.0, description=SHARED_GPU_HOURS_TEXT)


class ChargebackReport(Value):
    period: ReportPeriod
    generated_at: UtcDateTimeMillis
    summary: ReportSummary
    teams: list[TeamUsage]


CSV_COLUMNS: tuple[str, ...] = (
    "team_id",
    "model_tag",
    "gpu_arch",
    "gpu_hours",
    "rate_per_hour_usd",
    "cost_usd",
    # additive, only ever appended after the documented six
    "energy_kwh",
    "idle_gpu_hours",
    "shared_gpu_hours",
)


class ChargebackCsvRow(Value):
    team_id: str
    model_tag: str
    gpu_arch: str
    gpu_hours: float
    rate_per_hour_usd: float
    cost_usd: float
    energy_kwh: float = 0.0
    idle_gpu_hours: float = 0.0
    shared_gpu_hours: float = Field(default=0.0, description=SHARED_GPU_HOURS_TEXT)


# --------------------------------------------------------------------------
# Keys (gpufleet's own): /v1/keys/rotate
# --------------------------------------------------------------------------

Scope = Literal["operator", "ingest", "read"]


class KeyInfo(Value):
    """A key as listed: never its secret."""

    id: str
    name: str
    account: str
    scopes: list[Scope]
    prefix: str  # the first characters of the secret, enough to recognise it
    created_at: UtcDateTime
    last_used_at: UtcDateTime | None = None
    revoked_at: UtcDateTime | None = None


class KeyCreated(Value):
    """Returned once, at creation or rotation: the only time the secret is shown."""

    key: str
    info: KeyInfo


# Request and response models the OpenAPI document lists, by route.
MODELS_BY_NAME: dict[str, type[BaseModel]] = {
    cls.__name__: cls
    for cls in (
        ErrorBody, GpuStatusResponse, GpuMemoryResponse, PurgeRequest, PurgeResult,
        MetricSample, IngestResult, IngestHealth, Heartbeat, HeartbeatResult, HostsResponse,
        ChargebackReport, ChargebackCsvRow, KeyCreated, KeyInfo,
    )
}

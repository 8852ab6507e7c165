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
    BeforeValidator,
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


# Text every string field must be: no NUL (C strings and logs end there) and no lone
# UTF-16 surrogate (``"\\udfff"`` parses in Python but is not Unicode text: the store
# cannot hold it, and it used to stall the usage rollup).
TEXT_RULE = "must not contain NUL or lone surrogate characters"


def text_problem(value: str) -> bool:
    """Whether ``value`` holds a NUL or a lone surrogate (one C-level pass, none for ASCII)."""
    if "\x00" in value:
        return True
    if value.isascii():  # O(1) in CPython: a flag of the string
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _valid_text(value: Any) -> Any:
    if isinstance(value, str) and text_problem(value):
        raise ValueError(TEXT_RULE)
    return value


# A request's string: valid text (see TEXT_RULE); pair it with a max_length. Checked before
# pydantic's own str validation, which rejects a lone surrogate with a parse error of its own.
ValidText = BeforeValidator(_valid_text)

# The longest string each sample field takes (maxLength in the OpenAPI document):
# team_id and model_tag as documented; NVML's UUIDs and names are under 96 characters.
SAMPLE_TEXT_MAX_CHARS: dict[str, int] = {
    "gpu_uuid": 128, "gpu_name": 256, "job_id": 256, "team_id": 128, "model_tag": 128,
}
# No GPU telemetry predates this: an older sample timestamp is a clock or encoding error.
OLDEST_SAMPLE_TIME = datetime(2000, 1, 1, tzinfo=UTC)


def _not_too_old(value: datetime) -> datetime:
    if value < OLDEST_SAMPLE_TIME:
        raise ValueError(f"timestamp must not be before {format_utc(OLDEST_SAMPLE_TIME)}")
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
    # additive: the video engines (NVENC / NVDEC), percent; None = the GPU has none or won't say
    encoder_percent: int | None = None
    decoder_percent: int | None = None


class MigDevice(Value):
    """A MIG instance of a GPU whose MIG mode is on (additive)."""

    index: int
    uuid: str | None = None
    name: str | None = None
    memory_total_mb: int | None = None
    memory_used_mb: int | None = None


# GPU health (additive). Throttle reasons are NVML's clock event reasons, by name;
# a newer driver's unknown bit is listed as "unknown_0x...".
THROTTLE_REASON_NAMES: tuple[str, ...] = (
    "gpu_idle", "applications_clocks_setting", "sw_power_cap", "hw_slowdown", "sync_boost",
    "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown",
    "display_clock_setting",
)
# The reasons that cost a working GPU speed it should have: heat and hardware protection.
# A power cap, sync boost, idle or application clocks are listed but are not "throttling".
THROTTLING_REASONS: frozenset[str] = frozenset({
    "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown",
})


class GpuEcc(Value):
    """ECC error counts; volatile since the driver loaded, aggregate over the GPU's life."""

    volatile_corrected: int | None = None
    volatile_uncorrected: int | None = None
    aggregate_corrected: int | None = None
    aggregate_uncorrected: int | None = None


class GpuRetiredPages(Value):
    """Page retirement (before Ampere): pages retired for ECC errors, and one waiting for a reset."""

    single_bit_ecc: int | None = None  # retired after repeated corrected errors
    double_bit_ecc: int | None = None  # retired after an uncorrected error
    pending: bool | None = None  # a retirement takes effect at the next GPU reset


class GpuRemappedRows(Value):
    """Row remapping (Ampere and later), in place of page retirement."""

    correctable: int  # rows remapped for corrected errors
    uncorrectable: int  # rows remapped for uncorrected errors
    pending: bool  # a remap takes effect at the next GPU reset
    failed: bool  # a remap failed: the GPU needs service


class GpuPcie(Value):
    """The host link: throughput over NVML's 20 ms window, and the link's current and best shape."""

    tx_kb_s: int | None = None  # KB/s (1 KB = 1024 bytes), GPU to host
    rx_kb_s: int | None = None  # KB/s, host to GPU
    link_gen: int | None = None
    link_width: int | None = None  # lanes
    max_link_gen: int | None = None  # a link below its max was trained down (riser, slot, power saving)
    max_link_width: int | None = None


XID_ERRORS_KEPT = 20  # a GPU's xid_errors lists its latest this many


class XidError(Value):
    """One XID error the driver reported for a GPU (``nvidia-smi`` and the kernel log number them)."""

    xid: int
    at: UtcDateTime


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
    # additive, health (issue 14); None = this GPU or driver does not report it
    throttle_reasons: list[str] | None = None  # THROTTLE_REASON_NAMES; [] = full speed
    ecc_errors: GpuEcc | None = None  # None also when ECC is off
    retired_pages: GpuRetiredPages | None = None
    remapped_rows: GpuRemappedRows | None = None
    pcie: GpuPcie | None = None
    xid_errors: list[XidError] | None = None  # since the server started, the latest XID_ERRORS_KEPT
    xid_error_count: int | None = None  # all of them since the server started

    @property
    def throttling(self) -> bool:
        """Clocks held down by heat or hardware protection now (see THROTTLING_REASONS)."""
        return bool(self.throttle_reasons and THROTTLING_REASONS.intersection(self.throttle_reasons))

    def health_problems(self) -> list[str]:
        """What an operator should look at on this GPU, in words; [] when nothing is known wrong."""
        problems: list[str] = []
        if self.lost:
            problems.append("GPU is lost")
        if self.throttling:
            reasons = [r for r in self.throttle_reasons or () if r in THROTTLING_REASONS]
            problems.append("throttling: " + ", ".join(r.replace("_", " ") for r in reasons))
        ecc = self.ecc_errors
        if ecc is not None and ecc.volatile_uncorrected:
            problems.append(f"{ecc.volatile_uncorrected} uncorrected ECC error(s) since driver load")
        if self.retired_pages is not None and self.retired_pages.pending:
            problems.append("page retirement pending: reset the GPU")
        rows = self.remapped_rows
        if rows is not None and rows.failed:
            problems.append("row remapping failed: the GPU needs service")
        elif rows is not None and rows.pending:
            problems.append("row remapping pending: reset the GPU")
        if self.xid_error_count:
            last = self.xid_errors[-1].xid if self.xid_errors else None
            problems.append(f"{self.xid_error_count} XID error(s)"
                            + (f", last XID {last}" if last is not None else ""))
        return problems


class ProcessChild(Value):
    """A descendant of a GPU process (additive): the short tree under it, as /proc shows it."""

    pid: int
    ppid: int
    name: str
    host_rss_mb: int | None = None


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
    # additive (issue 14): the host's view of the process; None = unknown or not visible
    cpu_percent: float | None = None  # of one CPU (may pass 100): since the previous snapshot,
    #                                   on first sight its average since it started (as ps)
    host_rss_mb: int | None = None  # resident host memory, MiB
    started_at: UtcDateTime | None = None
    elapsed_s: float | None = None  # running time at the snapshot
    cgroup: str | None = None  # its cgroup path (cgroup v2, else the first v1 hierarchy)
    container_id: str | None = None  # Docker, containerd, CRI-O or Podman ID when the cgroup names one
    children: list[ProcessChild] | None = None  # descendants, nearest first (capped); [] = none


class NodeInfo(Value):
    """Whose GPUs these are and whether they are real (additive, top level)."""

    hostname: str
    driver_version: str | None = None
    cuda_version: str | None = None
    nvml_version: str | None = None
    simulated: bool
    backend: Literal["nvml", "simulated"]
    gpufleet_version: str | None = None
    # additive: which NVML process-list call this driver answers ("v3", "v2" or "v1")
    nvml_process_api: str | None = None


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
    processes: list[GpuProcess] | None = None  # additive: what holds the memory, as in status


class PurgeRequest(Value):
    force: StrictBool = False  # true only for a JSON true: force may SIGKILL busy processes
    # additive: limit the purge to some GPUs; an empty list would purge nothing
    gpu_indices: Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(min_length=1)] | None = None


class MemorySummary(Value):
    used_gb: float
    total_gb: float
    percent_used: float


class PurgeGpuMemory(Value):
    """One GPU's memory around a purge (additive): every GPU whose memory changed."""

    index: int
    used_before_gb: float
    used_after_gb: float
    freed_gb: float


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
    # the GPUs the memory figures cover: those asked for, and every GPU an unloaded model
    # also occupied; and every GPU of the node whose memory changed
    gpu_indices: list[int] = Field(default_factory=list)
    gpus: list[PurgeGpuMemory] = Field(default_factory=list)


# gpufleet's own: POST /v1/gpu/processes/{pid}/signal
SignalName = Literal["TERM", "INT", "KILL"]


class SignalRequest(Value):
    signal: SignalName


class SignalResult(Value):
    """A signal sent to one GPU process of this node (audited as the purge is)."""

    status: Literal["success"] = "success"
    timestamp: UtcDateTime
    pid: int
    signal: SignalName
    name: str
    user: str | None = None
    command: str | None = None
    gpu_indices: list[int]
    memory_mb: int | None = None  # its GPU memory on all those GPUs when signalled
    message: str
    node: NodeInfo | None = None


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


def _sample_text(name: str, min_length: int | None = None) -> Any:
    return Annotated[str, Field(min_length=min_length, max_length=SAMPLE_TEXT_MAX_CHARS[name]),
                     ValidText]


class MetricSample(Value):
    """One GPU reading as the agent posts it. Ranges are the documented ones.

    A sample's identity is (account, gpu_uuid, timestamp, workload), the workload being
    its job_id, team_id and model_tag (absent parts count as empty): the same identity
    again is a duplicate, stored once. A shared GPU sends one sample per workload at the
    same timestamp; they are one reading of the GPU split across the workloads by
    gpu_fraction (see its description).
    """

    timestamp: Annotated[UtcDateTime, AfterValidator(_not_too_old), Field(
        description="UTC; not before 2000-01-01T00:00:00Z (nor the server's retention, "
                    "limits.max_sample_age_days), at most 5 minutes in the future")]
    gpu_index: Annotated[int, Field(ge=0, le=2**31 - 1)]  # stored as INTEGER
    gpu_uuid: _sample_text("gpu_uuid", 1)  # type: ignore[valid-type]
    power_draw_w: Annotated[float, Field(ge=0, le=1500)]
    utilization_gpu_pct: Annotated[float, Field(ge=0, le=100)]
    utilization_memory_pct: Annotated[float, Field(ge=0, le=100)]
    temperature_c: Annotated[float, Field(ge=0, le=120)]
    memory_used_mb: Annotated[float, Field(ge=0)]
    gpu_name: _sample_text("gpu_name") | None = None  # type: ignore[valid-type]
    power_limit_w: Annotated[float, Field(ge=0)] | None = None
    energy_delta_j: Annotated[float, Field(ge=0)] | None = None
    fan_speed_pct: Annotated[float, Field(ge=0, le=100)] | None = None
    memory_total_mb: Annotated[float, Field(ge=0)] | None = None
    sm_clock_mhz: Annotated[float, Field(ge=0)] | None = None
    memory_clock_mhz: Annotated[float, Field(ge=0)] | None = None
    job_id: _sample_text("job_id") | None = None  # type: ignore[valid-type]
    team_id: _sample_text("team_id") | None = None  # type: ignore[valid-type]
    model_tag: _sample_text("model_tag") | None = None  # type: ignore[valid-type]
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
    agent_version: Annotated[str, Field(min_length=1, max_length=64), ValidText]
    gpu_count: Annotated[int, Field(ge=0, le=1024)]
    hostname: Annotated[str, Field(min_length=1, max_length=255), ValidText]


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
    # additive: the store holds simulated data (demo, --simulate), so its hosts may be made up
    simulated: bool = Field(default=False, description=(
        "true when the store holds simulated data (the console's demo store, serve --simulate): "
        "these hosts may be simulated ones"))


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
    # additive: the store holds simulated samples (demo, --simulate), so these figures are
    # not billable; the CSV form says it in the X-Gpufleet-Simulated response header
    simulated: bool = False


# On ingest and heartbeat requests: "true" marks simulated data (a store of real data answers
# 409). On every chargeback answer: "true" or "false", whether the store holds simulated data.
SIMULATED_HEADER = "X-Gpufleet-Simulated"


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


class KeyRotation(Value):
    """One rotation of a key: when, and the prefix of the secret it retired."""

    rotated_at: UtcDateTime
    old_prefix: str


class KeyInfo(Value):
    """A key as listed: never its secret. Its id and name stay the same across rotations."""

    id: str
    name: str
    account: str
    scopes: list[Scope]
    prefix: str  # the first characters of the secret, enough to recognise it
    created_at: UtcDateTime
    last_used_at: UtcDateTime | None = None
    revoked_at: UtcDateTime | None = None
    # additive: every rotation of this key, oldest first
    rotations: list[KeyRotation] = Field(default_factory=list)


class KeyCreated(Value):
    """Returned once, at creation or rotation: the only time the secret is shown."""

    key: str
    info: KeyInfo


# --------------------------------------------------------------------------
# Probes (gpufleet's own): /healthz, /readyz
# --------------------------------------------------------------------------


class HealthStatus(Value):
    """``GET /healthz``: the process answers."""

    status: Literal["ok"] = "ok"


class ReadyChecks(Value):
    store_writable: bool  # disk space left, and no write refused for want of it lately
    writer_alive: bool
    fold_lag_s: float  # how long acknowledged samples have waited for the usage rollup


class ReadyStatus(Value):
    """``GET /readyz``: 200 when ready; 503 with ``error`` saying which check failed."""

    status: Literal["ready", "not ready"]
    checks: ReadyChecks | None = None  # None on a node without a store
    error: str | None = None


# Request and response models the OpenAPI document lists, by route.
MODELS_BY_NAME: dict[str, type[BaseModel]] = {
    cls.__name__: cls
    for cls in (
        ErrorBody, GpuStatusResponse, GpuMemoryResponse, PurgeRequest, PurgeResult,
        SignalRequest, SignalResult,
        MetricSample, IngestResult, IngestHealth, Heartbeat, HeartbeatResult, HostsResponse,
        ChargebackReport, ChargebackCsvRow, KeyCreated, KeyInfo, HealthStatus, ReadyStatus,
    )
}

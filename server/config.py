"""Settings: one model, loaded from TOML and ``GPUFLEET_*`` environment variables.

Precedence, lowest first: defaults, the TOML file (platformdirs config dir, or
``--config``), environment variables, command-line flags. Settings are passed
down through constructors, never read from a global.

Environment variables name a field by its path with ``__`` between levels:
``GPUFLEET_SERVER__PORT=9000``, ``GPUFLEET_LIMITS__MAX_BODY_BYTES=1048576``.
A few short forms are accepted too: ``GPUFLEET_HOST``, ``GPUFLEET_PORT``,
``GPUFLEET_DB``, ``GPUFLEET_CONFIG``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

APP_NAME = "gpufleet"


def config_dir() -> Path:
    return Path(platformdirs.user_config_dir(APP_NAME))


def data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP_NAME))


def state_dir() -> Path:
    return Path(platformdirs.user_state_dir(APP_NAME))


SIMULATED_STORE = "gpufleet-simulated.duckdb"


def default_config_path() -> Path:
    return config_dir() / "config.toml"


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Limits(Section):
    """Every limit and timeout of the HTTP server, in one place (each must be > 0)."""

    max_header_bytes: int = Field(default=16 * 1024, ge=1024)  # request line + headers -> 431
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)  # counted on bytes received, chunked too -> 413
    header_timeout_s: float = Field(default=10.0, gt=0)  # absolute deadline for the whole head -> 408
    body_timeout_s: float = Field(default=30.0, gt=0)  # absolute deadline for the whole body -> 408
    keepalive_timeout_s: float = Field(default=15.0, gt=0)  # idle between requests on one connection
    max_connections: int = Field(default=1024, ge=1)  # open connections; past it -> 503 and close
    handler_timeout_s: float = Field(default=30.0, gt=0)  # a handler running longer -> 504
    write_timeout_s: float = Field(default=30.0, gt=0)  # a client not reading its response
    shutdown_grace_s: float = Field(default=10.0, ge=0)  # in-flight requests finish within this on SIGTERM
    close_linger_s: float = Field(default=1.0, ge=0)  # after an error response, drain unread input so the client sees it
    max_samples_per_batch: int = Field(default=10_000, ge=1)  # ingest bodies with more -> 400
    max_json_depth: int = Field(default=32, ge=2)  # JSON bodies nested deeper (arrays + objects) -> 400
    max_sample_age_days: int | None = Field(default=None, ge=1)  # retention: older samples -> 400 (never before 2000)
    max_connections_per_address: int = Field(default=128, ge=1)  # per client address (not trusted proxies) -> 503
    max_fold_lag_s: float = Field(default=120.0, gt=0)  # /readyz is 503 while the usage rollup is further behind


class RateLimit(Section):
    requests: int = Field(ge=1)
    per_s: float = Field(gt=0)


class RateLimits(Section):
    """Token buckets per key and route; the documented defaults."""

    ingest: RateLimit = RateLimit(requests=100, per_s=60)
    chargeback: RateLimit = RateLimit(requests=60, per_s=60)
    heartbeat: RateLimit = RateLimit(requests=60, per_s=60)
    hosts: RateLimit = RateLimit(requests=60, per_s=60)
    key_rotation: RateLimit = RateLimit(requests=5, per_s=3600)
    key_self: RateLimit = RateLimit(requests=60, per_s=60)  # GET /v1/keys/self: an agent asks once a start
    # Per client address, on every authenticated route: presented keys that were not valid.
    failed_auth: RateLimit = RateLimit(requests=30, per_s=60)
    # GET /v1/export/*: one request per exported day and table, so a bulk export needs room
    export: RateLimit = RateLimit(requests=600, per_s=60)

    @model_validator(mode="before")
    @classmethod
    def _over_the_defaults(cls, value: Any) -> Any:
        """A bucket given in part (``GPUFLEET_RATE_LIMITS__INGEST__REQUESTS=5`` alone, or one
        key in the file) keeps its default for the other field, as the pricing table does."""
        if not isinstance(value, dict):
            return value
        laid = dict(value)
        for name, given in value.items():
            default = cls.model_fields[name].default if name in cls.model_fields else None
            if isinstance(given, dict) and isinstance(default, RateLimit):
                laid[name] = {**default.model_dump(), **given}
        return laid


DEFAULT_GPU_RATES_USD: dict[str, float] = {
    # $/GPU-hour by architecture; override in [pricing.gpu_rates_usd]
    "B200": 6.00,
    "H200": 4.50,
    "H100": 3.50,
    "A100": 2.00,
    "L40S": 1.20,
    "L40": 1.00,
    "A10G": 0.80,
    "A10": 0.75,
    "L4": 0.60,
    "V100": 0.90,
    "T4": 0.35,
}


class Pricing(Section):
    # the configured table is laid over the defaults: `A100 = 3.0` changes A100 only
    gpu_rates_usd: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: dict(DEFAULT_GPU_RATES_USD))
    default_rate_usd: float = Field(default=1.00, ge=0)  # an architecture missing from the table
    energy_usd_per_kwh: float = Field(default=0.12, ge=0)
    expected_interval_s: float = Field(default=60.0, gt=0)  # a sample covers up to 2x this until the next one
    idle_utilization_pct: float = Field(default=5.0, ge=0, le=100)  # below this a GPU-hour counts as idle

    @field_validator("gpu_rates_usd", mode="before")
    @classmethod
    def _over_the_defaults(cls, value: Any) -> Any:
        return {**DEFAULT_GPU_RATES_USD, **value} if isinstance(value, dict) else value


class RuntimeSettings(Section):
    """One purge adapter: what holds GPU memory on this node and how to make it let go."""

    type: Literal["ollama", "triton", "process", "simulated"]
    name: str | None = None
    url: str | None = None  # ollama / triton base URL
    process_names: list[str] = Field(default_factory=list)  # process adapter: match by name
    users: list[str] = Field(default_factory=list)  # process adapter: match by user
    grace_s: float = Field(default=10.0, ge=0)  # SIGTERM -> SIGKILL
    timeout_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _complete(self) -> RuntimeSettings:
        if self.type in ("ollama", "triton"):
            if not self.url:
                raise ValueError(f"{'an' if self.type == 'ollama' else 'a'} {self.type} runtime needs a url (e.g. http://127.0.0.1:"
                                 f"{11434 if self.type == 'ollama' else 8000})")
            if not self.url.startswith(("http://", "https://")):
                raise ValueError(f"url must start with http:// or https://, not {self.url!r}")
        if self.type == "process" and not (self.process_names or self.users):
            raise ValueError("a process runtime needs process_names or users (it would match nothing)")
        return self


class SamplerSettings(Section):
    enabled: bool = True  # `gpufleet serve` samples its own GPUs into its store
    interval_s: float = Field(default=60.0, ge=1.0)


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = 8765
    db_path: Path | None = None  # default: data_dir()/gpufleet.duckdb
    tls_cert: Path | None = None
    tls_key: Path | None = None
    account: str = "default"  # the account keys created from the CLI belong to by default
    heartbeat_interval_s: float = 300.0
    purge_settle_s: float = 5.0  # after-memory is read once it settles, within this bound
    simulate: bool = False  # serve the simulated fleet even when NVML finds GPUs
    # simulated data's own store (the console's demo, serve --simulate without --db): never db_path
    simulated_db_path: Path | None = None  # default: data_dir()/gpufleet-simulated.duckdb
    # reverse proxies (addresses or CIDR ranges) whose X-Forwarded-For is believed, for rate
    # limits, the failed-auth limiter and the access log; they are exempt from the
    # per-address connection cap (every client behind them shares their address)
    trusted_proxies: list[str] = Field(default_factory=list)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxy_list(cls, value: Any) -> Any:
        # GPUFLEET_SERVER__TRUSTED_PROXIES="10.0.0.5, 10.1.0.0/16"
        return [v for v in value.split(",") if v.strip()] if isinstance(value, str) else value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_addresses(cls, value: list[str]) -> list[str]:
        from gpufleet.server.http.forwarded import parse_networks

        parse_networks(value)
        return [v.strip() for v in value]

    def resolved_db_path(self, *, simulated: bool = False) -> Path:
        """The store of real data, or with ``simulated`` the store simulated data goes to."""
        if simulated:
            return self.simulated_db_path or data_dir() / SIMULATED_STORE
        return self.db_path or data_dir() / "gpufleet.duckdb"


class MetricsSettings(Section):
    """``GET /metrics``: Prometheus exposition of this node's GPUs and of the server itself."""

    enabled: bool = True
    # loopback: no key from 127.0.0.1/::1, a read key from anywhere else (or through a proxy);
    # key: a read key always; open: no key ever (only behind a network you trust)
    access: Literal["loopback", "key", "open"] = "loopback"
    # GPU readings are at most this old: read in the background, never once per scrape
    refresh_s: float = Field(default=15.0, ge=0.1)


class AttributionRule(Section):
    """Agent attribution: first matching rule wins."""

    gpu_index: int | None = None
    process_name: str | None = None
    user: str | None = None
    team_id: str | None = None
    model_tag: str | None = None
    job_id: str | None = None
    scheduler_source: Literal["kubernetes", "slurm", "runai", "manual"] | None = None


class AgentSettings(Section):
    server: str | None = None
    key_file: Path | None = None
    interval_s: float = Field(default=60.0, ge=1.0)
    heartbeat_interval_s: float = 300.0
    spool_dir: Path | None = None  # default: state_dir()/spool
    spool_max_bytes: int = 64 * 1024 * 1024
    batch_max_samples: int = 1000
    rules: list[AttributionRule] = Field(default_factory=list)
    default_team_id: str | None = None
    default_model_tag: str | None = None
    default_scheduler_source: Literal["kubernetes", "slurm", "runai", "manual"] = "manual"
    # which environment variable / pod label names the team and the model
    team_env: list[str] = Field(default_factory=lambda: ["SLURM_JOB_ACCOUNT", "RUNAI_PROJECT", "GPUFLEET_TEAM"])
    model_env: list[str] = Field(default_factory=lambda: ["GPUFLEET_MODEL_TAG", "MODEL_TAG"])
    team_label: str = "team"
    model_label: str = "model"
    pod_labels_file: str = "/etc/podinfo/labels"  # downward-API labels, read in the pod's root
    namespace_as_team: bool = False  # a pod without a team label or variable: its namespace
    flush_timeout_s: float = 5.0  # on SIGTERM, delivery of what is spooled gets this long
    status_interval_s: float = 60.0  # one status line in the log this often
    request_timeout_s: float = 10.0
    retry_base_s: float = 1.0  # delivery backoff: doubles per failure up to retry_max_s, jittered
    retry_max_s: float = 60.0


class NodeSettings(Section):
    """A remote node the console watches."""

    name: str
    url: str
    token_env: str | None = None
    token_file: Path | None = None


# schemas.THROTTLING_REASONS: heat and hardware protection, not a power cap or idle clocks.
DEFAULT_THROTTLE_REASONS = ["hw_slowdown", "hw_thermal_slowdown", "sw_thermal_slowdown", "hw_power_brake_slowdown"]


class ConsoleThresholds(Section):
    """When a reading turns the console's warning or critical colour (each warning at or below its critical)."""

    temp_warn_c: float = Field(default=75.0, ge=0, le=150)
    temp_crit_c: float = Field(default=85.0, ge=0, le=150)
    memory_warn_pct: float = Field(default=70.0, ge=0, le=100)
    memory_crit_pct: float = Field(default=90.0, ge=0, le=100)
    power_warn_pct: float = Field(default=80.0, ge=0, le=200)  # of the GPU's power limit
    power_crit_pct: float = Field(default=95.0, ge=0, le=200)
    util_warn_pct: float = Field(default=75.0, ge=0, le=100)  # colour only: a busy GPU is not trouble
    util_crit_pct: float = Field(default=95.0, ge=0, le=100)
    idle_util_pct: float = Field(default=5.0, ge=0, le=100)  # below it a GPU counts as idle
    ecc_corrected_warn: int = Field(default=1000, ge=1)  # volatile corrected ECC errors
    ecc_uncorrected_crit: int = Field(default=1, ge=1)  # volatile uncorrected ECC errors
    # NVML throttle reasons that mark a GPU; a power cap under load is normal, so not by default.
    throttle_reasons: list[str] = Field(default_factory=lambda: list(DEFAULT_THROTTLE_REASONS))
    stale_after_s: float = Field(default=15.0, gt=0)  # a node whose newest reading is older is stale

    @field_validator("throttle_reasons")
    @classmethod
    def _known_reasons(cls, value: list[str]) -> list[str]:
        from gpufleet.server.schemas import THROTTLE_REASON_NAMES

        unknown = [r for r in value if r not in THROTTLE_REASON_NAMES]
        if unknown:
            raise ValueError(f"unknown throttle reason(s) {', '.join(unknown)}; "
                             f"known: {', '.join(THROTTLE_REASON_NAMES)}")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> ConsoleThresholds:
        for name in ("temp", "memory", "power", "util"):
            unit = "c" if name == "temp" else "pct"
            warn, crit = getattr(self, f"{name}_warn_{unit}"), getattr(self, f"{name}_crit_{unit}")
            if warn > crit:
                raise ValueError(f"{name}_warn_{unit} ({warn:g}) is above {name}_crit_{unit} ({crit:g})")
        return self


class ConsoleSettings(Section):
    refresh_s: float = Field(default=2.0, ge=0.5)
    request_timeout_s: float = 3.0
    include_local: bool = True
    local_server_url: str | None = None  # chargeback/hosts server; default http://127.0.0.1:<server.port>
    theme: str = "textual-dark"
    readonly: bool = False
    keybindings: dict[str, str] = Field(default_factory=dict)  # binding id -> keys
    thresholds: ConsoleThresholds = ConsoleThresholds()
    trouble_first: bool = True  # down, auth-failed and stale nodes above the rest
    follow_selection: bool = False  # the cursor follows its GPU when live values re-sort the list
    view: Literal["grouped", "flat", "processes"] = "grouped"  # the fleet screen's first view


class Settings(Section):
    server: ServerSettings = ServerSettings()
    limits: Limits = Limits()
    rate_limits: RateLimits = RateLimits()
    pricing: Pricing = Pricing()
    sampler: SamplerSettings = SamplerSettings()
    metrics: MetricsSettings = MetricsSettings()
    runtimes: list[RuntimeSettings] = Field(default_factory=list)
    agent: AgentSettings = AgentSettings()
    console: ConsoleSettings = ConsoleSettings()
    nodes: list[NodeSettings] = Field(default_factory=list)

    def with_overrides(self, overrides: dict[str, Any]) -> Settings:
        """A copy with dotted-path overrides applied (``{"server.port": 9000}``); None is skipped."""
        data = self.model_dump()
        for dotted, value in overrides.items():
            if value is None:
                continue
            _set_path(data, dotted.split("."), value)
        return Settings.model_validate(data)


_SHORT_ENV = {
    "GPUFLEET_HOST": "server.host",
    "GPUFLEET_PORT": "server.port",
    "GPUFLEET_DB": "server.db_path",
}


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    for key in path[:-1]:
        data = data.setdefault(key, {})
        if not isinstance(data, dict):
            raise TypeError(f"{'.'.join(path)}: {key} is a value, not a section")
    data[path[-1]] = value


def _env_sources(environ: dict[str, str]) -> dict[str, str]:
    """Dotted setting path -> the ``GPUFLEET_*`` variable that sets it."""
    sources: dict[str, str] = {}
    for name in environ:
        if name in _SHORT_ENV:
            sources[_SHORT_ENV[name]] = name
        elif name.startswith("GPUFLEET_") and "__" in name:
            sources[".".join(name.removeprefix("GPUFLEET_").lower().split("__"))] = name
    return sources


class ConfigError(Exception):
    """The configuration file or an override is invalid; the message says where."""


def load_settings(
    path: Path | None = None,
    *,
    environ: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Settings from defaults, the TOML file, ``GPUFLEET_*`` variables and ``overrides``.

    A ConfigError names where each bad value came from (the file and key, or the
    environment variable, or the command line), one line per problem.
    """
    environ = dict(os.environ) if environ is None else environ
    from_env = path is None and bool(environ.get("GPUFLEET_CONFIG"))
    explicit = path or (Path(environ["GPUFLEET_CONFIG"]) if from_env else None)
    file = explicit or default_config_path()
    file_label = f"{file} (from GPUFLEET_CONFIG)" if from_env else str(file)
    data: dict[str, Any] = {}
    if file.exists():
        try:
            data = tomllib.loads(file.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file_label}: cannot read: {getattr(exc, 'strerror', None) or exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file_label}: not valid TOML: {exc}") from exc
    elif explicit is not None:
        raise ConfigError(f"{file_label}: no such configuration file")
    sources: dict[tuple[str, ...], str] = {}
    for dotted, name in _env_sources(environ).items():
        try:
            _set_path(data, dotted.split("."), environ[name])
        except TypeError as exc:
            raise ConfigError(f"environment variable {name}: {exc}") from None
        sources[tuple(dotted.split("."))] = f"environment variable {name}"
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, sources, file_label)) from None
    try:
        return settings.with_overrides(overrides or {})
    except (ValidationError, TypeError) as exc:
        given = {tuple(k.split(".")): "command line" for k, v in (overrides or {}).items()
                 if v is not None}
        if isinstance(exc, TypeError):
            raise ConfigError(f"command line: {exc}") from None
        raise ConfigError(_describe(exc, given, "command line")) from None


_PLAIN_MESSAGES = {
    "extra_forbidden": "unknown setting",
    "missing": "required setting missing",
}


def _describe(exc: ValidationError, sources: dict[tuple[str, ...], str], fallback: str) -> str:
    """One line per error: ``<where it came from>: <key>: <what is wrong>``."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = tuple(str(part) for part in error["loc"])
        source = fallback
        for path, label in sources.items():
            shared = min(len(path), len(loc))
            if shared and path[:shared] == loc[:shared]:
                source = label
                break
        key = ".".join(loc) or "(top level)"
        message = _PLAIN_MESSAGES.get(error["type"], error["msg"])
        if error["type"] == "value_error":  # our own validators' words, without pydantic's prefix
            message = message.removeprefix("Value error, ")
        lines.append(f"{source}: {key}: {message}")
    return "\n".join(lines)

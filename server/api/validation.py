"""Whole-batch validation of ingest bodies, hand-written for speed.

``server.schemas.MetricSample`` is the documented source of truth; this module
applies the same rules in one tight loop (per-sample pydantic costs several
microseconds a sample, this a fraction of that) and words every failure the way
the ingest document does: ``Metric at index 3: temperature_c must be between 0 and 120``.
A test checks that both agree.

Theory: a valid batch is checked column by column (``set(map(type, col))``,
``min``, ``max``: loops that run in C); only a batch that fails is walked sample
by sample (``_problems``) to name the first failing sample and all its problems.
The fast path may therefore stop at the first failure, and the slow path is
free to be thorough.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any, get_args

from gpufleet.server.schemas import (
    OLDEST_SAMPLE_TIME,
    OPTIONAL_SAMPLE_FIELDS,
    REQUIRED_SAMPLE_FIELDS,
    SAMPLE_TEXT_MAX_CHARS,
    TEXT_RULE,
    GpuFractionBasis,
    format_utc,
    text_problem,
)

MAX_TAG_CHARS = 128
MAX_HOSTNAME_CHARS = 255
FUTURE_TOLERANCE = timedelta(minutes=5)
SCHEDULER_SOURCES: tuple[str, ...] = ("kubernetes", "slurm", "runai", "manual")
_MAX_FLOAT = 1.7976931348623157e308  # rejects inf (and NaN fails every comparison)
_MAX_GPU_INDEX = 2**31 - 1  # the stored column is a 32-bit INTEGER

# name -> (low, high) for the numeric fields; high None means unbounded (finite).
NUMERIC_RANGES: dict[str, tuple[float, float | None]] = {
    "power_draw_w": (0, 1500),
    "utilization_gpu_pct": (0, 100),
    "utilization_memory_pct": (0, 100),
    "temperature_c": (0, 120),
    "memory_used_mb": (0, None),
    "power_limit_w": (0, None),
    "energy_delta_j": (0, None),
    "fan_speed_pct": (0, 100),
    "memory_total_mb": (0, None),
    "sm_clock_mhz": (0, None),
    "memory_clock_mhz": (0, None),
}
_OPTIONAL_NUMBERS = ("power_limit_w", "energy_delta_j", "fan_speed_pct", "memory_total_mb",
                     "sm_clock_mhz", "memory_clock_mhz")
_OPTIONAL_STRINGS = ("gpu_name", "job_id")
_TAGS = ("team_id", "model_tag")
ALL_FIELDS: tuple[str, ...] = REQUIRED_SAMPLE_FIELDS + OPTIONAL_SAMPLE_FIELDS
_KNOWN_KEYS = frozenset((*ALL_FIELDS, "hostname"))
_CONTAINERS = (list, dict)
_MAX_CHARS = SAMPLE_TEXT_MAX_CHARS
_NONE_TYPE = type(None)
_STR_TYPE = str
_DICT = {dict}
_STR = {str}
_INT = {int}
_NUMBER_OR_NONE = {int, float, _NONE_TYPE}
_STR_OR_NONE = {str, _NONE_TYPE}
_NONE_ONLY = {_NONE_TYPE}
_SOURCES_OR_NONE = {*SCHEDULER_SOURCES, None}
_UTC_ONLY = {UTC}
_FROM_ISO = datetime.fromisoformat
_TZINFO = attrgetter("tzinfo")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_FLOOR_TEXT = f"timestamp must not be before {format_utc(OLDEST_SAMPLE_TIME)}"
TS_US = "_ts_us"  # validate_columns: every timestamp as integer µs since the epoch


class IngestValidationError(ValueError):
    """The batch is rejected; the message is the client-facing error text."""


@dataclass(frozen=True, slots=True)
class _Window:
    """The timestamps a batch may hold, and what to say about one too old."""

    earliest: datetime
    latest: datetime
    too_old: str
    max_depth: int | None  # unknown fields nested deeper than this fail the fast path


def validate_batch(payload: Any, *, max_samples: int, now: datetime | None = None,
                   finite: bool = False, max_age: timedelta | None = None,
                   max_depth: int | None = None) -> list[dict[str, Any]]:
    """The samples, validated, with ``timestamp`` an aware UTC datetime; or raise.

    The returned dicts are the request's own objects (``timestamp`` replaced in place):
    optional fields may be absent and unknown fields may remain; read them with ``.get``.
    ``finite=True`` skips the NaN checks for payloads that cannot hold NaN (orjson's).
    Timestamps must lie between ``now - max_age`` (never before ``OLDEST_SAMPLE_TIME``)
    and 5 minutes after ``now``.
    """
    rows, _ = _validate(payload, max_samples, now, finite, max_age, max_depth)
    return rows


def validate_columns(payload: Any, *, max_samples: int, now: datetime | None = None,
                     max_age: timedelta | None = None) -> dict[str, list[Any]]:
    """The same validation, answered column by column: field name -> one value per sample."""
    _, columns = _validate(payload, max_samples, now, False, max_age, None)
    return columns


def validate_rows_and_columns(payload: Any, *, max_samples: int, now: datetime | None = None,
                              finite: bool = False, max_age: timedelta | None = None,
                              max_depth: int | None = None
                              ) -> tuple[list[dict[str, Any]], dict[str, list[Any]]]:
    """Both answers at once (the ingest route); the columns include ``TS_US``, every
    timestamp as integer µs since the epoch. ``max_depth``: a batch whose unknown fields
    nest deeper fails here (the caller's stdlib path then names the problem)."""
    return _validate(payload, max_samples, now, finite, max_age, max_depth)


def _window(now: datetime | None, max_age: timedelta | None, max_depth: int | None) -> _Window:
    now = now or datetime.now(UTC)
    if max_age is not None and now - max_age > OLDEST_SAMPLE_TIME:
        days = max_age / timedelta(days=1)
        return _Window(now - max_age, now + FUTURE_TOLERANCE,
                       f"timestamp is more than {days:g} days in the past", max_depth)
    return _Window(OLDEST_SAMPLE_TIME, now + FUTURE_TOLERANCE, _FLOOR_TEXT, max_depth)


def _validate(payload: Any, max_samples: int, now: datetime | None, finite: bool,
              max_age: timedelta | None, max_depth: int | None
              ) -> tuple[list[dict[str, Any]], dict[str, list[Any]]]:
    if not isinstance(payload, list):
        raise IngestValidationError("Request body must be a JSON array of metric objects")
    if not payload:
        raise IngestValidationError("Request body must contain at least one metric")
    if len(payload) > max_samples:
        raise IngestValidationError(
            f"Too many metrics in one request: {len(payload)} (maximum {max_samples})")
    window = _window(now, max_age, max_depth)
    columns = _columns_if_valid(payload, window, finite)
    if columns is None:
        raise IngestValidationError(_first_failure(payload, window))
    for sample, ts in zip(payload, columns["timestamp"], strict=True):
        sample["timestamp"] = ts
    _ignore_bad_hostnames(payload, columns)
    return payload, columns


def _ignore_bad_hostnames(payload: list[dict[str, Any]], columns: dict[str, list[Any]]) -> None:
    """``hostname`` is not a documented field, but the store keeps it when it is sane.

    An unusable one is dropped like any unknown field rather than failing the batch.
    """
    hosts = columns["hostname"]
    kinds = set(map(type, hosts))
    if kinds == _NONE_ONLY:
        columns["hostname"] = hosts
        return
    if kinds <= _STR_OR_NONE:
        names = {h for h in hosts if h is not None}
        if min(map(len, names)) >= 1 and max(map(len, names)) <= MAX_HOSTNAME_CHARS \
                and not text_problem("".join(names)):
            columns["hostname"] = hosts
            return
    for sample in payload:
        host = sample.get("hostname")
        if host is not None and not (type(host) is str and 1 <= len(host) <= MAX_HOSTNAME_CHARS
                                     and not text_problem(host)):
            sample["hostname"] = None
    columns["hostname"] = [s.get("hostname") for s in payload]


def _columns_if_valid(payload: list[Any], window: _Window, finite: bool) -> dict[str, list[Any]] | None:
    """Columns of a valid batch, or None: whole-column checks run at C speed (min, max, set).

    Columns with few distinct values (timestamps, strings) are checked on their distinct
    values only; their text in one joined string (``text_problem``: one C-level pass).
    ``finite``: the caller guarantees no NaN or infinity (orjson's output).
    """
    if set(map(type, payload)) != _DICT:
        return None
    columns = {name: [s.get(name) for s in payload] for name in _COLUMN_FIELDS}
    absent = 0  # known fields missing or null, summed over the batch (see _unknown_too_deep)
    try:
        raw_ts = columns["timestamp"]
        parsed = _parse_distinct(set(raw_ts))
        if parsed is None or max(parsed.values()) > window.latest \
                or min(parsed.values()) < window.earliest:
            return None
        columns["timestamp"] = list(map(parsed.__getitem__, raw_ts))
        columns[TS_US] = list(map({raw: (ts - _EPOCH) // _MICROSECOND
                                   for raw, ts in parsed.items()}.__getitem__, raw_ts))
        index = columns["gpu_index"]
        if set(map(type, index)) != _INT or min(index) < 0 or max(index) > _MAX_GPU_INDEX:
            return None
        uuids = set(columns["gpu_uuid"])
        if set(map(type, uuids)) != _STR or min(map(len, uuids)) < 1 \
                or max(map(len, uuids)) > _MAX_CHARS["gpu_uuid"] or text_problem("".join(uuids)):
            return None
        for name, (low, high) in NUMERIC_RANGES.items():
            col = columns[name]
            kinds = set(map(type, col))
            if not kinds <= _NUMBER_OR_NONE:
                return None
            if _NONE_TYPE in kinds:
                if name in REQUIRED_SAMPLE_FIELDS:
                    return None
                absent += col.count(None)
                col = [v for v in col if v is not None]
                if not col:
                    continue
            # sum() is NaN when any value is NaN (only a non-JSON caller could pass one)
            if not finite and sum(col) != sum(col):
                return None
            if min(col) < low or max(col) > (_MAX_FLOAT if high is None else high):
                return None
        for name in _OPTIONAL_STRINGS + _TAGS:
            distinct = set(columns[name])
            if not set(map(type, distinct)) <= _STR_OR_NONE:
                return None
            if None in distinct:
                absent += columns[name].count(None)
                distinct.discard(None)
            if distinct and (max(map(len, distinct)) > _MAX_CHARS[name]
                             or text_problem("".join(distinct))):
                return None
        sources = columns["scheduler_source"]
        if not set(sources) <= _SOURCES_OR_NONE:
            return None
        absent += sources.count(None)
        hosts = columns["hostname"] = [s.get("hostname") for s in payload]
        absent += hosts.count(None)
        shares_absent = _shares_absent_if_valid(payload, columns, absent, finite)
        if shares_absent is None:
            return None
        absent += shares_absent
        if window.max_depth is not None and _unknown_too_deep(payload, absent, window.max_depth):
            return None
    except TypeError:  # an unhashable value (a list where a string belongs)
        return None
    return columns


def _unknown_too_deep(payload: list[dict[str, Any]], absent: int, max_depth: int) -> bool:
    """Whether a field outside the documented ones nests containers deeper than ``max_depth``
    (counting the batch's array and the sample's object as two levels).

    Documented fields hold scalars (checked above). If every key of every sample is a
    documented field with a value, the key counts add up and nothing else is looked at.
    """
    present = len(_KNOWN_KEYS) * len(payload) - absent
    if sum(map(len, payload)) == present:
        return False
    for name in set().union(*payload) - _KNOWN_KEYS:
        for sample in payload:
            value = sample.get(name)
            if type(value) in _CONTAINERS and _depth(value, max_depth - 2) > max_depth - 2:
                return True
    return False


def _depth(value: Any, limit: int) -> int:
    """How deep ``value`` nests lists and dicts (a scalar is 0), counting no further than limit + 1."""
    if type(value) not in _CONTAINERS:
        return 0
    if limit < 1:
        return 1
    items = value.values() if type(value) is dict else value
    return 1 + max((_depth(item, limit - 1) for item in items), default=0)


def _parse_distinct(raws: set[Any]) -> dict[str, datetime] | None:
    """Each distinct timestamp text parsed as ``parse_timestamp`` does, or None if any fails."""
    if set(map(type, raws)) != _STR or min(map(len, raws)) < 16 or max(map(len, raws)) > 40:
        return None
    texts = list(raws)
    try:
        stamps = list(map(_FROM_ISO, texts))
    except (ValueError, OverflowError):  # OverflowError: no known input, but never a 500
        return None
    if set(map(_TZINFO, stamps)) != _UTC_ONLY:  # offsets, naive values: one by one
        stamps = [parse_timestamp(text) for text in texts]
        if None in stamps:
            return None
    return dict(zip(texts, stamps, strict=True))


def _first_failure(payload: list[Any], window: _Window) -> str:
    for index, sample in enumerate(payload):
        if type(sample) is not dict:
            return f"Metric at index {index}: must be a JSON object"
        missing = [name for name in REQUIRED_SAMPLE_FIELDS if sample.get(name) is None]
        problems = _problems(sample, window)
        if missing:
            text = f"Metric at index {index} missing required fields: {', '.join(missing)}"
            return f"{text}; {'; '.join(problems)}" if problems else text
        if problems:
            return f"Metric at index {index}: {'; '.join(problems)}"
    if window.max_depth is not None:
        return f"Request body is nested too deeply: at most {window.max_depth} levels"
    # The column checks and the per-sample checks disagree: a bug, but never a 500.
    return "Invalid metrics batch"


def parse_timestamp(value: Any) -> datetime | None:
    """An ISO-8601 date-time as aware UTC; a value without offset is taken as UTC."""
    if type(value) is not str or len(value) < 16 or len(value) > 40:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except (ValueError, OverflowError):
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    if parsed.utcoffset():
        try:  # 0001-01-01T00:30+01:00 or 9999-12-31T23:30-01:00 lie outside datetime's range in UTC
            return parsed.astimezone(UTC)
        except OverflowError:
            return None
    return parsed if parsed.tzinfo is UTC else parsed.replace(tzinfo=UTC)


def _problems(s: dict[str, Any], window: _Window) -> list[str]:
    """Everything wrong with one sample's present fields, in field order."""
    problems: list[str] = []
    raw_ts = s.get("timestamp")
    if raw_ts is not None:
        ts = parse_timestamp(raw_ts)
        if ts is None:
            problems.append("timestamp must be an ISO-8601 UTC timestamp")
        elif ts > window.latest:
            problems.append("timestamp is more than 5 minutes in the future")
        elif ts < window.earliest:
            problems.append(window.too_old)
    gpu_index = s.get("gpu_index")
    if gpu_index is not None:
        if type(gpu_index) is not int or gpu_index < 0:
            problems.append("gpu_index must be an integer >= 0")
        elif gpu_index > _MAX_GPU_INDEX:
            problems.append(f"gpu_index must be at most {_MAX_GPU_INDEX}")
    uuid = s.get("gpu_uuid")
    if uuid is not None:
        if type(uuid) is not str or not uuid:
            problems.append("gpu_uuid must be a non-empty string")
        else:
            problems += _text_problems("gpu_uuid", uuid)
    for name, (low, high) in NUMERIC_RANGES.items():
        value = s.get(name)
        if value is None:
            continue
        if type(value) not in (int, float):
            problems.append(f"{name} must be a number")
        elif high is None and not low <= value <= _MAX_FLOAT:
            problems.append(f"{name} must be a finite number >= {low}")
        elif high is not None and not low <= value <= high:
            problems.append(f"{name} must be between {low} and {high}")
    for name in _OPTIONAL_STRINGS + _TAGS:
        value = s.get(name)
        if value is None:
            continue
        if type(value) is not str:
            problems.append(f"{name} must be a string")
        else:
            problems += _text_problems(name, value)
    source = s.get("scheduler_source")
    if source is not None and source not in SCHEDULER_SOURCES:
        problems.append(f"scheduler_source must be one of: {', '.join(SCHEDULER_SOURCES)}")
    problems.extend(_share_problems(s))
    return problems


# Shared GPUs (additive fields): a workload's share of its GPU, and how it was measured.
# Whether one GPU's shares at one time add up to at most 1 is the store's check
# (store.shares): it also counts the samples stored by earlier batches.
GPU_FRACTION_BASES: tuple[str, ...] = get_args(GpuFractionBasis)
_BASES_OR_NONE = {*GPU_FRACTION_BASES, None}
_SHARE_FIELDS = ("gpu_fraction", "gpu_fraction_basis")
_COLUMN_FIELDS = tuple(name for name in ALL_FIELDS if name not in _SHARE_FIELDS)


def _shares_absent_if_valid(payload: list[dict[str, Any]], columns: dict[str, list[Any]],
                            absent: int, finite: bool) -> int | None:
    """Both fields' columns: how many of their values are missing or null; None: one is invalid.

    ``absent``: the other known fields' missing or null values. When every key of every
    sample is one of those (almost every batch), neither field is there: no columns to read.
    """
    count = len(payload)
    if sum(map(len, payload)) == (len(_KNOWN_KEYS) - len(_SHARE_FIELDS)) * count - absent:
        columns["gpu_fraction"], columns["gpu_fraction_basis"] = [None] * count, [None] * count
        return 2 * count
    for name in _SHARE_FIELDS:
        columns[name] = [s.get(name) for s in payload]
    fractions = columns["gpu_fraction"]
    kinds = set(map(type, fractions))
    if kinds != _NONE_ONLY:
        if not kinds <= _NUMBER_OR_NONE:
            return None
        given = [v for v in fractions if v is not None]
        if not finite and sum(given) != sum(given):
            return None
        if min(given) <= 0 or max(given) > 1:
            return None
    bases = columns["gpu_fraction_basis"]
    if not set(bases) <= _BASES_OR_NONE:
        return None
    return fractions.count(None) + bases.count(None)


def _share_problems(s: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    fraction = s.get("gpu_fraction")
    if fraction is not None:
        if type(fraction) not in (int, float):
            problems.append("gpu_fraction must be a number")
        elif not 0 < fraction <= 1:
            problems.append("gpu_fraction must be greater than 0 and at most 1")
    basis = s.get("gpu_fraction_basis")
    if basis is not None and (type(basis) is not str or basis not in GPU_FRACTION_BASES):
        problems.append(f"gpu_fraction_basis must be one of: {', '.join(GPU_FRACTION_BASES)}")
    return problems


def _text_problems(name: str, value: str) -> list[str]:
    problems = []
    if len(value) > _MAX_CHARS[name]:
        problems.append(f"{name} must be at most {_MAX_CHARS[name]} characters")
    if text_problem(value):
        problems.append(f"{name} {TEXT_RULE}")
    return problems

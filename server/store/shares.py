"""Shared GPUs: a sample's workload identity and the rule that one GPU's shares add up to 1.

A sample's identity is (account, gpu_uuid, timestamp, workload), the workload
being its ``job_id``, ``team_id`` and ``model_tag`` (absent parts count as
empty). Rows of one GPU at one time are one reading split across workloads; their
``gpu_fraction`` values may add up to at most ``MAX_SHARE_SUM`` (1 plus a rounding
tolerance) whether they come in one batch or several. This module holds the
Python side of that rule (a batch's own check, and the error that names the GPU
and the time); the billing side is in ``usage_sql``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

# Agents round their fractions (0.333 x 3, 0.34 + 0.33 + 0.33): a sum up to 1.01 is
# accepted and billed scaled down to exactly 1; anything more bills a GPU twice.
SHARE_TOLERANCE = 0.01
MAX_SHARE_SUM = 1.0 + SHARE_TOLERANCE
# what a sum is compared with: 0.505 + 0.505 must pass however the floats round
OVER_SHARE_SUM = MAX_SHARE_SUM + 1e-9

Workload = tuple[str, str, str]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def workload(sample: dict[str, Any]) -> Workload:
    """(job_id, team_id, model_tag), absent parts as ''."""
    return (sample.get("job_id") or "", sample.get("team_id") or "", sample.get("model_tag") or "")


class GpuShareError(ValueError):
    """The gpu_fraction values of one GPU at one time add up to more than ``MAX_SHARE_SUM``.

    ``str()`` is the client-facing text (a 400); ``index`` is the batch's sample that
    pushed the sum over, when known (the writer knows the GPU and time, not the index:
    ``located`` finds it in the batch).
    """

    def __init__(self, gpu_uuid: str, ts_us: int, total: float, *, stored: float = 0.0,
                 index: int | None = None, with_indices: Sequence[int] = ()) -> None:
        self.gpu_uuid = gpu_uuid
        self.ts_us = ts_us
        self.total = total
        self.stored = stored
        self.index = index
        self.with_indices = tuple(with_indices)
        super().__init__(self._text())

    def _text(self) -> str:
        where = f"Metric at index {self.index}: " if self.index is not None else ""
        context = []
        if self.with_indices:
            word = "index" if len(self.with_indices) == 1 else "indexes"
            context.append(f"with the metrics at {word} {', '.join(map(str, self.with_indices))}")
        if self.stored:
            context.append(f"{_number(self.stored)} of it already stored")
        said = f" ({'; '.join(context)})" if context else ""
        return (f"{where}gpu_fraction of GPU {self.gpu_uuid} at {format_ts_us(self.ts_us)} adds up to "
                f"{_number(self.total)}{said}; the rows of one GPU at one time may add up to at most 1")

    def located(self, samples: Sequence[dict[str, Any]], stamps: Sequence[int]) -> GpuShareError:
        """The same error naming the batch's last sample with a fraction for this GPU and time."""
        found = [i for i, (s, ts) in enumerate(zip(samples, stamps, strict=True))
                 if ts == self.ts_us and s.get("gpu_uuid") == self.gpu_uuid
                 and s.get("gpu_fraction") is not None]
        if not found:
            return self
        return GpuShareError(self.gpu_uuid, self.ts_us, self.total, stored=self.stored,
                             index=found[-1], with_indices=found[:-1])


def format_ts_us(ts_us: int) -> str:
    """ISO-8601 UTC with ``Z``; microseconds only when there are any."""
    value = _EPOCH + timedelta(microseconds=ts_us)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{value.microsecond:06d}Z" if value.microsecond else f"{text}Z"


def _number(value: float) -> str:
    return f"{value:.6g}"


def first_of_each_workload(samples: Sequence[dict[str, Any]], uuids: Sequence[str],
                           stamps: Sequence[int]) -> list[int]:
    """Indices of the samples to keep: the first of every (gpu_uuid, timestamp, workload).

    A repeat within one batch is a duplicate, as a resent one is: the store keeps the
    first it received.
    """
    seen: set[tuple[str, int, Workload]] = set()
    keep: list[int] = []
    for i, (sample, uuid, ts) in enumerate(zip(samples, uuids, stamps, strict=True)):
        identity = (uuid, ts, workload(sample))
        if identity not in seen:
            seen.add(identity)
            keep.append(i)
    return keep


def check_batch(uuids: Sequence[str], stamps: Sequence[int], fractions: Sequence[float | None],
                keep: Iterable[int] | None = None) -> None:
    """Raise GpuShareError when one GPU's fractions at one time add up to more than allowed.

    ``keep``: the samples that count (``first_of_each_workload``), default all.
    """
    sums: dict[tuple[str, int], float] = {}
    seen: dict[tuple[str, int], list[int]] = {}
    for i in range(len(stamps)) if keep is None else keep:
        fraction = fractions[i]
        if fraction is None:
            continue
        uuid, ts = uuids[i], stamps[i]
        key = (uuid, ts)
        total = sums.get(key, 0.0) + fraction
        if total > OVER_SHARE_SUM:
            raise GpuShareError(uuid, ts, total, index=i, with_indices=seen.get(key, []))
        sums[key] = total
        seen.setdefault(key, []).append(i)

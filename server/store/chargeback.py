"""Chargeback: covered GPU time per team, model and architecture, priced and rounded.

The method is written down in docs/chargeback.md. Rounded figures add up: each
(team, model, arch) row is rounded first; a team's totals are sums of its
rounded rows; the summary is the sum of the teams.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from gpufleet.server.config import Pricing
from gpufleet.server.pricing import gpu_arch, rate_for
from gpufleet.server.schemas import (
    CSV_COLUMNS,
    ChargebackReport,
    GpuArchUsage,
    ModelUsage,
    ReportPeriod,
    ReportSummary,
    TeamUsage,
)

UNATTRIBUTED = "unattributed"
UNTAGGED = "untagged"
MAX_SPAN_DAYS = 366
US_PER_HOUR = 3_600_000_000
J_PER_KWH = 3_600_000


class ReportRangeError(ValueError):
    """The report's dates are the wrong way round or span too long."""


def check_range(from_date: date, to_date: date) -> None:
    if from_date > to_date:
        raise ReportRangeError("'from' must not be after 'to'")
    if (to_date - from_date).days + 1 > MAX_SPAN_DAYS:
        raise ReportRangeError(f"a report spans at most {MAX_SPAN_DAYS} days")
    if to_date >= date.max:  # the period ends at to + 1 day, which datetime cannot hold
        raise ReportRangeError(f"'to' must be before {date.max.isoformat()}")


@dataclass(frozen=True)
class UsageRow:
    """One (team, model, arch) line, already rounded."""

    team_id: str
    model_tag: str
    gpu_arch: str
    gpu_hours: float
    rate: float
    cost_usd: float
    energy_kwh: float
    energy_cost_usd: float
    idle_gpu_hours: float
    shared_gpu_hours: float = 0.0  # the part of gpu_hours billed as a share of a shared GPU


def usage_rows(raw: Iterable[tuple[str, str, str, float, float, float, float]],
               pricing: Pricing) -> list[UsageRow]:
    """Raw sums (team, model, gpu_name, covered_us, energy_j, idle_us, shared_us) -> rounded priced rows."""
    sums: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    for team, model, name, covered_us, energy_j, idle_us, shared_us in raw:
        key = (team or UNATTRIBUTED, model or UNTAGGED, gpu_arch(name))
        acc = sums[key]
        acc[0] += float(covered_us)
        acc[1] += float(energy_j or 0.0)
        acc[2] += float(idle_us)
        acc[3] += float(shared_us or 0.0)
    rows = []
    for (team, model, arch), (covered_us, energy_j, idle_us, shared_us) in sums.items():
        hours = round(covered_us / US_PER_HOUR, 2)
        kwh = round(energy_j / J_PER_KWH, 3)
        rate = rate_for(arch, pricing)
        rows.append(UsageRow(
            team_id=team, model_tag=model, gpu_arch=arch, gpu_hours=hours, rate=rate,
            cost_usd=round(hours * rate, 2), energy_kwh=kwh,
            energy_cost_usd=round(kwh * pricing.energy_usd_per_kwh, 2),
            idle_gpu_hours=round(idle_us / US_PER_HOUR, 2),
            shared_gpu_hours=round(shared_us / US_PER_HOUR, 2),
        ))
    rows.sort(key=lambda r: (r.team_id, -r.cost_usd, r.model_tag, r.gpu_arch))
    return rows


def _sum(values: Iterable[float], digits: int) -> float:
    return round(sum(values), digits)


def build_report(rows: list[UsageRow], from_date: date, to_date: date, now: datetime) -> ChargebackReport:
    teams: list[TeamUsage] = []
    by_team: dict[str, list[UsageRow]] = defaultdict(list)
    for row in rows:
        by_team[row.team_id].append(row)
    for team_id, team_rows in by_team.items():
        archs: dict[str, list[UsageRow]] = defaultdict(list)
        models: dict[str, list[UsageRow]] = defaultdict(list)
        for row in team_rows:
            archs[row.gpu_arch].append(row)
            models[row.model_tag].append(row)
        by_gpu = [
            GpuArchUsage(
                gpu_arch=arch, gpu_hours=_sum((r.gpu_hours for r in rs), 2), rate=rs[0].rate,
                cost_usd=_sum((r.cost_usd for r in rs), 2), energy_kwh=_sum((r.energy_kwh for r in rs), 3),
                idle_gpu_hours=_sum((r.idle_gpu_hours for r in rs), 2),
                shared_gpu_hours=_sum((r.shared_gpu_hours for r in rs), 2),
            )
            for arch, rs in archs.items()
        ]
        by_model = [
            ModelUsage(
                model_tag=model, gpu_hours=_sum((r.gpu_hours for r in rs), 2),
                cost_usd=_sum((r.cost_usd for r in rs), 2), energy_kwh=_sum((r.energy_kwh for r in rs), 3),
                shared_gpu_hours=_sum((r.shared_gpu_hours for r in rs), 2),
            )
            for model, rs in models.items()
        ]
        by_gpu.sort(key=lambda u: (-u.cost_usd, u.gpu_arch))
        by_model.sort(key=lambda u: (-u.cost_usd, u.model_tag))
        teams.append(TeamUsage(
            team_id=team_id,
            total_cost_usd=_sum((r.cost_usd for r in team_rows), 2),
            total_gpu_hours=_sum((r.gpu_hours for r in team_rows), 2),
            by_gpu=by_gpu, by_model=by_model,
            energy_kwh=_sum((r.energy_kwh for r in team_rows), 3),
            energy_cost_usd=_sum((r.energy_cost_usd for r in team_rows), 2),
            idle_gpu_hours=_sum((r.idle_gpu_hours for r in team_rows), 2),
            shared_gpu_hours=_sum((r.shared_gpu_hours for r in team_rows), 2),
        ))
    teams.sort(key=lambda t: (-t.total_cost_usd, t.team_id))
    summary = ReportSummary(
        total_cost_usd=_sum((t.total_cost_usd for t in teams), 2),
        total_gpu_hours=_sum((t.total_gpu_hours for t in teams), 2),
        energy_kwh=_sum((t.energy_kwh for t in teams), 3),
        energy_cost_usd=_sum((t.energy_cost_usd for t in teams), 2),
        idle_gpu_hours=_sum((t.idle_gpu_hours for t in teams), 2),
        shared_gpu_hours=_sum((t.shared_gpu_hours for t in teams), 2),
    )
    return ChargebackReport(
        period=ReportPeriod.model_validate({"from": from_date, "to": to_date}),
        generated_at=now, summary=summary, teams=teams,
    )


def rows_csv(rows: list[UsageRow]) -> str:
    """CSV with the documented six columns first, extras appended (schemas.CSV_COLUMNS)."""
    lines = [_csv_line(CSV_COLUMNS)]
    by_team_cost: dict[str, float] = defaultdict(float)
    for row in rows:
        by_team_cost[row.team_id] += row.cost_usd
    for row in sorted(rows, key=lambda r: (-round(by_team_cost[r.team_id], 2), r.team_id, -r.cost_usd,
                                           r.model_tag, r.gpu_arch)):
        lines.append(_csv_line([
            csv_text(row.team_id), csv_text(row.model_tag), csv_text(row.gpu_arch),
            f"{row.gpu_hours:.2f}", _money_rate(row.rate),
            f"{row.cost_usd:.2f}", f"{row.energy_kwh:.3f}", f"{row.idle_gpu_hours:.2f}",
            f"{row.shared_gpu_hours:.2f}",
        ]))
    return "".join(lines)


def _csv_line(cells: Iterable[str]) -> str:
    """One CSV line; a cell holding a comma, quote, CR or LF is quoted (RFC 4180).

    Python 3.11's csv writer leaves a lone CR unquoted when lines end in LF, and readers
    then split the row there; every cell here is quoted when it needs to be.
    """
    return ",".join(_quoted(c) if _NEEDS_QUOTES.search(c) else c for c in cells) + "\n"


def _quoted(cell: str) -> str:
    return '"' + cell.replace('"', '""') + '"'


# A spreadsheet opening the CSV runs a cell starting with one of these as a formula
# (=HYPERLINK(...), +cmd|..., @SUM(...)); tab and CR start one in some importers.
_NEEDS_QUOTES = re.compile(r'[,"\r\n]')
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: str) -> str:
    """A text cell that no spreadsheet runs as a formula: a leading ``'`` when it would start one.

    Only text columns (team, model tag, architecture: all chosen by clients) pass here;
    the numbers are ours and stay numbers.
    """
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def _money_rate(rate: float) -> str:
    return f"{rate:.2f}" if round(rate, 2) == rate else repr(rate)


def period_bounds_us(from_date: date, to_date: date) -> tuple[int, int]:
    """[from 00:00Z, to+1d 00:00Z) in epoch microseconds."""
    from gpufleet.server.store.timeutil import day_start_us

    return day_start_us(from_date), day_start_us(to_date + timedelta(days=1))

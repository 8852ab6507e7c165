"""``gpufleet report``: the chargeback report from a server (SDK) or from a local store.

DuckDB lets one process open a store; while ``gpufleet serve`` or the console's embedded
server holds it, the report is asked of that server over its owner-only admin socket
(``server.admin``), computed with the server's pricing, and printed the same way.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import date
from pathlib import Path

from gpufleet.server.commands.terminal import printable, printable_lines

HELP = "Print a chargeback report (GPU-hours, energy, cost by team) as a table, JSON or CSV."
MAX_SPAN_DAYS = 366
EXIT_CODES = """\
  0  printed (or written to --output)
  1  the report failed: no store, the server refused or could not be reached
  2  a bad flag (dates, span) or setting
"""
SIMULATED_NOTE = ("SIMULATED: this store holds simulated samples (demo or --simulate); "
                  "these figures are not billable")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


Rendered = tuple[str, bool]  # the report as printed, and whether its store holds simulated data


class _UsageError(Exception):
    """A flag the command cannot use; exit 2 with the message."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Dates are checked in run(): argparse would print "invalid fromisoformat value".
    parser.add_argument("--from", dest="from_", required=True, metavar="YYYY-MM-DD",
                        help="first day (UTC), inclusive")
    parser.add_argument("--to", required=True, metavar="YYYY-MM-DD", help="last day (UTC), inclusive")
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table",
                        help="table for people, JSON as the API answers, CSV for finance")
    parser.add_argument("--output", type=Path, default=None, help="write to this file instead of stdout")
    parser.add_argument("--server", default=None, help="server URL (default: GPUFLEET_URL; else the local store)")
    parser.add_argument("--key-file", type=Path, default=None, help="file holding a read key (or GPUFLEET_KEY)")
    parser.add_argument("--db", type=Path, default=None, help="this store file (read directly, or through the gpufleet serve that holds it; "
                             "default: <data dir>/gpufleet.duckdb)")
    parser.add_argument("--account", default=None, help="from a store (--db or the default one): the account (default: server.account)")
    parser.add_argument("--config", type=Path, default=None,
                        help="TOML configuration (default: the platform config dir)")


def run(args: argparse.Namespace) -> int:
    import os

    from gpufleet.server.config import ConfigError, load_settings

    try:
        args.from_, args.to = report_period(args.from_, args.to)
        settings = load_settings(args.config)
    except (ConfigError, _UsageError) as exc:
        print(f"gpufleet report: {exc}", file=sys.stderr)
        return 2
    server = args.server or (None if args.db else os.environ.get("GPUFLEET_URL"))
    try:
        text, simulated = _from_server(args, server) if server else _from_store(args, settings)
    except Exception as exc:  # every failure is one line for a person, never a traceback
        print(f"gpufleet report: {exc}", file=sys.stderr)
        return 1
    if args.output:
        args.output.write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        # CSV is the data as stored, for files and pipes; on a terminal, shown escaped
        sys.stdout.write(printable_lines(text) if args.format == "csv" and sys.stdout.isatty()
                         else text)
    if args.format == "csv" and simulated:  # the CSV's columns are fixed: say it beside it
        print(f"gpufleet report: {SIMULATED_NOTE}", file=sys.stderr)
    return 0


def report_period(start: str, end: str) -> tuple[date, date]:
    """``--from``/``--to`` as dates, checked like the server checks them, or _UsageError."""
    days: list[date] = []
    for flag, text in (("--from", start), ("--to", end)):
        try:
            if not _DAY.fullmatch(text):
                raise ValueError(text)
            days.append(date.fromisoformat(text))
        except ValueError:
            raise _UsageError(f"{flag}: expected a date like 2026-01-31, got {text!r}") from None
    first, last = days
    if first > last:
        raise _UsageError(f"--from {first} is after --to {last}")
    if (last - first).days + 1 > MAX_SPAN_DAYS:
        raise _UsageError(f"--from {first} to --to {last}: a report spans at most "
                          f"{MAX_SPAN_DAYS} days")
    return first, last


def _from_server(args: argparse.Namespace, url: str) -> Rendered:
    from gpufleet.server.client import GpuFleetClient, read_key_file

    key = read_key_file(args.key_file) if args.key_file else None
    with GpuFleetClient(url, api_key=key) as client:
        if args.format == "csv":
            return client.chargeback_csv_report(args.from_, args.to)
        report = client.chargeback_report(args.from_, args.to)
    return _render(report, args.format), report.simulated


def _from_store(args: argparse.Namespace, settings) -> Rendered:
    from gpufleet.server.store import MetricsStore, StoreLockedError

    path = args.db or settings.server.resolved_db_path()
    if not path.exists():
        raise FileNotFoundError(f"no store at {path}; give --server URL or --db PATH")
    account = args.account or settings.server.account
    try:
        store = MetricsStore.open(path, expected_interval_s=settings.pricing.expected_interval_s,
                                  idle_utilization_pct=settings.pricing.idle_utilization_pct)
    except StoreLockedError as exc:
        return _through_server(args, path, exc.pid, account)
    with store:
        if args.format == "csv":
            return (store.chargeback_csv(account, args.from_, args.to, settings.pricing),
                    store.simulated is not None)
        report = store.chargeback(account, args.from_, args.to, settings.pricing)
    return _render(report, args.format), report.simulated


def _through_server(args: argparse.Namespace, path: Path, pid: int | None, account: str) -> Rendered:
    """The report from the ``gpufleet serve`` holding ``path``, over its admin socket."""
    from gpufleet.server.admin_client import AdminReports, AdminUnavailableError

    try:
        with AdminReports(path, pid) as reports:
            if args.format == "csv":
                return reports.chargeback_csv(account, args.from_, args.to)
            report = reports.chargeback(account, args.from_, args.to)
            return _render(report, args.format), report.simulated
    except AdminUnavailableError as exc:
        from gpufleet.server.store.holder import describe_holder

        raise RuntimeError(
            f"the store {path} is in use by {describe_holder(pid)}, and {exc}; "
            "ask that server instead: gpufleet report --server URL --key-file FILE "
            "(a key with the read scope), or run this again once it has stopped") from None


def _render(report, fmt: str) -> str:
    if fmt == "json":
        return report.model_dump_json(by_alias=True, indent=2) + "\n"
    lines = [f"Chargeback {report.period.from_} .. {report.period.to}"]
    if report.simulated:
        lines.append(SIMULATED_NOTE)
    header = ("TEAM", "GPU-HOURS", "COST USD", "ENERGY KWH", "IDLE H", "SHARED H")
    # team names are what agents sent: printable() keeps their escapes off the terminal
    rows = [(printable(t.team_id), f"{t.total_gpu_hours:,.2f}", f"{t.total_cost_usd:,.2f}", f"{t.energy_kwh:,.3f}",
             f"{t.idle_gpu_hours:,.2f}", f"{t.shared_gpu_hours:,.2f}") for t in report.teams]
    s = report.summary
    rows.append(("TOTAL", f"{s.total_gpu_hours:,.2f}", f"{s.total_cost_usd:,.2f}", f"{s.energy_kwh:,.3f}",
                 f"{s.idle_gpu_hours:,.2f}", f"{s.shared_gpu_hours:,.2f}"))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths, strict=True))))
    return "\n".join(lines) + "\n"

"""``gpufleet export``: samples and the daily usage rollup as hive-partitioned Parquet, incrementally.

From the local store (``--db``, default the data dir's), through the admin channel of the
``gpufleet serve`` that holds it, or from a server over HTTP (``--server URL`` with a read
key: that key's account only). See ``server/exporter.py`` for the layout.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gpufleet.server.commands.report import _UsageError

HELP = ("Export raw samples and the daily usage rollup as hive-partitioned Parquet "
        "(account=/day=), writing only what is new since the last run into the same folder.")
EPILOG = """\
read back (one line each):
  duckdb -c "SELECT * FROM read_parquet('DIR/samples/**/*.parquet', hive_partitioning=true)"
  python -c "import polars as pl; print(pl.scan_parquet('DIR/usage_daily/**/*.parquet', hive_partitioning=True).collect())"
"""
EXIT_CODES = """\
  0  exported (or nothing was new)
  1  the export failed (store, server, folder); every file already written
     stays whole
  2  a bad flag or setting
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", "-o", type=Path, required=True, metavar="DIR",
                        help="the Parquet folder (created; reused by later runs)")
    parser.add_argument("--from", dest="from_", default=None, metavar="YYYY-MM-DD",
                        help="first day (UTC), inclusive (default: the first day with samples)")
    parser.add_argument("--to", default=None, metavar="YYYY-MM-DD",
                        help="last day (UTC), inclusive (default: the last day with samples)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--db", type=Path, default=None, metavar="PATH",
                        help="this store (read directly, or through the gpufleet serve holding it; "
                             "default: <data dir>/gpufleet.duckdb)")
    source.add_argument("--server", default=None, metavar="URL",
                        help="export from this server over HTTP (GET /v1/export/*), the key's "
                             "account only")
    parser.add_argument("--key-file", type=Path, default=None, metavar="FILE",
                        help="with --server: a file holding a key with the read scope "
                             "(default: GPUFLEET_KEY)")
    parser.add_argument("--account", default=None,
                        help="with a store: export only this account (default: every account)")
    parser.add_argument("--config", type=Path, default=None, metavar="PATH",
                        help="TOML configuration (default: the platform config dir)")


def run(args: argparse.Namespace) -> int:
    from gpufleet.server.config import ConfigError, load_settings
    from gpufleet.server.exporter import ExportError

    try:
        first, last = _period(args.from_, args.to)
        settings = load_settings(args.config)
        if args.server and args.account:
            raise _UsageError("--account is for a store; a server exports its key's account")
    except (ConfigError, _UsageError) as exc:
        print(f"gpufleet export: {exc}", file=sys.stderr)
        return 2
    output: Path = args.output
    try:
        if args.server:
            result = _from_server(args, output, first, last)
        else:
            result = _from_store(args, settings, output, first, last)
    except ExportError as exc:
        print(f"gpufleet export: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a full disk, a DuckDB error: one line for a person, no traceback
        text = str(exc)
        if "No space left on device" in text or getattr(exc, "errno", None) == 28:
            text = (f"no space left on the device of {output}; every file already written "
                    "stays whole: run again once there is room")
        print(f"gpufleet export: {text}", file=sys.stderr)
        return 1
    print(result.summary(output))
    return 0


def _period(start: str | None, end: str | None):  # type: ignore[no-untyped-def]
    import re
    from datetime import date

    days: list[date | None] = []
    for flag, text in (("--from", start), ("--to", end)):
        if text is None:
            days.append(None)
            continue
        try:
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                raise ValueError(text)
            days.append(date.fromisoformat(text))
        except ValueError:
            hint = " (the destination folder is --output DIR)" if flag == "--to" else ""
            raise _UsageError(f"{flag}: expected a date like 2026-01-31, got {text!r}{hint}") from None
    first, last = days
    if first and last and first > last:
        raise _UsageError(f"--from {first} is after --to {last}")
    return first, last


def _from_server(args, output, first, last):  # type: ignore[no-untyped-def]
    import httpx

    from gpufleet.server.client import read_key_file
    from gpufleet.server.export_sources import ServerSource
    from gpufleet.server.exporter import export

    key = read_key_file(args.key_file) if args.key_file else os.environ.get("GPUFLEET_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=args.server.rstrip("/"), headers=headers, timeout=300.0) as http:
        return export(ServerSource(http, "/v1/export"), output, first=first, last=last)


def _from_store(args, settings, output, first, last):  # type: ignore[no-untyped-def]
    from gpufleet.server.export_sources import StoreSource
    from gpufleet.server.exporter import export
    from gpufleet.server.store import MetricsStore, StoreLockedError

    path = args.db or settings.server.resolved_db_path()
    if not path.exists():
        raise FileNotFoundError(f"no store at {path}; give --db PATH or --server URL")
    try:
        store = MetricsStore.open(path, expected_interval_s=settings.pricing.expected_interval_s,
                                  idle_utilization_pct=settings.pricing.idle_utilization_pct)
    except StoreLockedError as exc:
        return _through_server(args, settings, path, exc.pid, output, first, last)
    with store:
        return export(StoreSource(store, args.account), output, first=first, last=last)


def _through_server(args, settings, path, pid, output, first, last):  # type: ignore[no-untyped-def]
    """The export from the ``gpufleet serve`` holding ``path``, over its admin socket."""
    from gpufleet.server.admin_client import AdminExport, AdminUnavailableError
    from gpufleet.server.export_sources import ServerSource
    from gpufleet.server.exporter import export

    try:
        admin = AdminExport(path, pid)
    except AdminUnavailableError as exc:
        who = f"pid {pid}" if pid else "another process"
        raise RuntimeError(
            f"the store {path} is in use by a running gpufleet serve ({who}), and {exc}; "
            "export from that server instead: gpufleet export --server URL --key-file FILE "
            "(a key with the read scope)") from None
    with admin:
        source = ServerSource(admin.http, AdminExport.PREFIX, accounts=True,
                              account=args.account)
        return export(source, output, first=first, last=last)

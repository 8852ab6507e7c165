"""``gpufleet demo reset``: start the console's demo over, or take the sample fleet out of a store.

Without ``--db`` it deletes the demo's own store (``server.simulated_db_path``, default
``<data dir>/gpufleet-simulated.duckdb``) with its write-ahead log and the console's
key and discovery files for it; the next console without a GPU loads a fresh sample
month. It deletes only a store marked simulated, and never one a process holds.

With ``--db PATH`` it removes, in place, the described fleet's samples, usage and
hosts from that store, and the mark they put there: for a store an older gpufleet's
console demo loaded the sample month into. Keys and every other GPU's data stay.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

HELP = "Reset the console's demo data (its own store), or remove the sample fleet from a store."
EXIT_CODES = """\
  0  deleted or removed (or there was no demo store to reset)
  1  not done: a process holds the store, or it holds no simulated data (not
     the demo's)
  2  a bad setting
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="demo_command", metavar="ACTION", required=True)
    text = ("Delete the demo's store (the next demo starts afresh); "
            "with --db, remove the sample fleet's data from that store.")
    reset = sub.add_parser("reset", help=text, description=textwrap.fill(text, 79), epilog=parser.epilog,
                           formatter_class=parser.formatter_class)
    reset.add_argument("--db", type=Path, default=None, metavar="PATH",
                       help="a store to remove the sample fleet's samples, usage and hosts from, "
                            "in place (keys and other data stay)")
    reset.add_argument("--config", type=Path, default=None, metavar="PATH", help="configuration file")


def run(args: argparse.Namespace) -> int:
    from gpufleet.server.config import ConfigError, load_settings

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"gpufleet demo: {exc}", file=sys.stderr)
        return 2
    if args.db is not None:
        return _remove_sample_fleet(args.db)
    return _delete_demo_store(settings.server.resolved_db_path(simulated=True))


def _open(path: Path):
    from gpufleet.server.store import MetricsStore, StoreLockedError

    if not path.exists():
        print(f"gpufleet demo: no store at {path}; nothing to reset", file=sys.stderr)
        return None
    try:
        return MetricsStore.open(path)
    except StoreLockedError as exc:
        print(f"gpufleet demo: {exc}; quit it first, then run this again", file=sys.stderr)
        return None


def _delete_demo_store(path: Path) -> int:
    from gpufleet.server.config import data_dir

    store = _open(path)
    if store is None:
        return 0 if not path.exists() else 1
    with store:
        marked = store.simulated is not None
    if not marked:
        print(f"gpufleet demo: {path} holds no simulated data, so it is not the demo's; "
              "not deleted", file=sys.stderr)
        return 1
    # The console's key for this store goes too: the store that knew its hash is gone.
    folder = data_dir()
    for leftover in (path, path.with_name(path.name + ".wal"), folder / "console-key-simulated"):
        leftover.unlink(missing_ok=True)
    print(f"deleted the demo's store {path}; the next demo loads a fresh sample month")
    return 0


def _remove_sample_fleet(path: Path) -> int:
    from gpufleet.server.fleet import default_fleet
    from gpufleet.server.sample import sample_fleet_gpu_uuids

    store = _open(path)
    if store is None:
        return 1
    with store:
        samples, hosts = store.remove_sample_fleet(sample_fleet_gpu_uuids(),
                                                   [node.name for node in default_fleet().nodes])
        left = store.simulated
    print(f"removed {samples} samples and {hosts} hosts of the sample fleet from {path}")
    if left is not None:
        print(f"gpufleet demo: {path} still holds simulated data ({', '.join(left.sources)}), "
              "and its reports still say so", file=sys.stderr)
    return 0

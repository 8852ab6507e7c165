"""``gpufleet keys create|list|revoke|rotate``: manage API keys in the local store.

DuckDB lets one process write a database file. When a running ``gpufleet
serve`` or console holds the store, the command is sent to its server over the
owner-only admin socket (``server.admin``) and the output is the same; if the
holder has no usable admin channel, it says who it is (with its pid) instead of
waiting or corrupting anything. Secrets are printed once and never again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "Create, list, revoke or rotate API keys (a secret is shown once, when it is made)."
EXIT_CODES = """\
  0  done
  1  no such key, the key is already revoked, the name is taken, or the store
     is held by a server without an admin channel
  2  a bad flag or setting
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # --db and --config go before or after the action: `keys --db X list` and `keys list --db X`
    store_options = argparse.ArgumentParser(add_help=False)
    store_options.add_argument("--db", type=Path, default=argparse.SUPPRESS,
                               help="store file (default: the server's, <data dir>/gpufleet.duckdb)")
    store_options.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                               help="configuration file")
    parser.add_argument("--db", type=Path, default=None, help="store file (default: the server's, <data dir>/gpufleet.duckdb)")
    parser.add_argument("--config", type=Path, default=None, help="configuration file")
    sub = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    def action_parser(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, parents=[store_options],
                              formatter_class=parser.formatter_class, epilog=parser.epilog)

    create = action_parser("create", "create a key and print its secret once")
    create.add_argument("--name", required=True,
                        help="the key's name, unique among the account's active keys")
    create.add_argument("--scope", required=True, help="comma-separated: operator, ingest, read")
    create.add_argument("--account", default=None, help="account the key belongs to (default: server.account)")
    create.add_argument("--json", action="store_true", help="print the key as JSON")
    listing = action_parser("list", "list keys (never their secrets)")
    listing.add_argument("--account", default=None,
                         help="only this account's keys (default: every account)")
    listing.add_argument("--json", action="store_true", help="print the keys as JSON")
    for name, text in (("revoke", "revoke a key: it stops working at once"), ("rotate", "replace a key's secret; the old one stops now")):
        action = action_parser(name, text)
        action.add_argument("key", metavar="ID_OR_NAME", help="the key's id, or its name")
        action.add_argument("--account", default=None,
                            help="the key's account, when a name is in several")
        action.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from gpufleet.server.config import ConfigError, load_settings
    from gpufleet.server.store import (
        KeyNameTakenError,
        MetricsStore,
        StoreLockedError,
        UnknownKeyError,
    )

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"gpufleet keys: {exc}", file=sys.stderr)
        return 2
    path = args.db or settings.server.resolved_db_path()
    try:
        store = MetricsStore.open(path)
    except StoreLockedError as exc:
        return _through_server(path, exc.pid, args, settings.server.account)
    try:
        return _dispatch(store, args, settings.server.account)
    except (UnknownKeyError, KeyNameTakenError, ValueError) as exc:
        print(f"gpufleet keys: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()


def _through_server(path: Path, pid: int | None, args: argparse.Namespace, default_account: str) -> int:
    """The same command, run by the server holding the store over its owner-only admin socket."""
    from gpufleet.server.admin_client import AdminKeys, AdminUnavailableError
    from gpufleet.server.store import KeyNameTakenError, UnknownKeyError
    from gpufleet.server.store.holder import describe_holder

    try:
        with AdminKeys(path, pid) as keys:
            return _dispatch(keys, args, default_account)
    except (UnknownKeyError, KeyNameTakenError, ValueError) as exc:
        print(f"gpufleet keys: {exc}", file=sys.stderr)
        return 1
    except AdminUnavailableError as exc:
        print(
            f"gpufleet keys: the store {path} is in use by {describe_holder(pid)}, and {exc}.\n"
            "Stop it and run this again, or rotate a key through the server: "
            "POST /v1/keys/rotate with that key.",
            file=sys.stderr,
        )
        return 3


def _dispatch(store, args: argparse.Namespace, default_account: str) -> int:
    command = args.keys_command
    if command == "create":
        created = store.create_key(args.name, args.scope.split(","), args.account or default_account)
        _print_created(created, args.json)
    elif command == "rotate":
        _print_created(store.rotate_key(args.key, args.account), args.json)
    elif command == "revoke":
        info = store.revoke_key(args.key, args.account)
        print(info.model_dump_json() if args.json else f"revoked {info.id} ({info.name}, account {info.account})")
    else:
        keys = store.list_keys(args.account)
        if args.json:
            print(json.dumps([k.model_dump(mode="json") for k in keys], indent=2))
        else:
            _print_table(keys)
    return 0


def _print_created(created, as_json: bool) -> None:
    info = created.info
    if as_json:
        print(created.model_dump_json())
        return
    print(created.key)
    print(f"key {info.id} '{info.name}' (account {info.account}, scopes {','.join(info.scopes)})",
          file=sys.stderr)
    print("This secret will not be shown again; store it now.", file=sys.stderr)


def _print_table(keys) -> None:
    if not keys:
        print("no keys")
        return
    header = ("ID", "NAME", "ACCOUNT", "SCOPES", "PREFIX", "CREATED", "LAST USED", "ROTATED", "STATE")
    rows = [
        (k.id, k.name, k.account, ",".join(k.scopes), k.prefix + "…", k.created_at.strftime("%Y-%m-%d %H:%M"),
         k.last_used_at.strftime("%Y-%m-%d %H:%M") if k.last_used_at else "-",
         # rotations keep the key: how many, and the last (the --json output lists each)
         f"{len(k.rotations)}x, last {k.rotations[-1].rotated_at.strftime('%Y-%m-%d %H:%M')}"
         if k.rotations else "-",
         "revoked" if k.revoked_at else "active")
        for k in keys
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())

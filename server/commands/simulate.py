"""``gpufleet simulate``: N simulated nodes, each serving the operator API on its own port."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpufleet.server.app import ServerApp

HELP = ("Serve N simulated GPU nodes (operator API only) on loopback ports, "
        "for trying the console against a fleet. The operator token is written to "
        "--token-file (0600), never printed.")
TOKEN_PREFIX = "gpf_sim_"
EXIT_CODES = """\
  0  stopped by SIGTERM or SIGINT
  1  a node cannot listen, or a file cannot be written
  2  a bad flag or setting
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=4, metavar="N",
                        help="how many nodes (the described fleet first, then sim-node-NNN)")
    parser.add_argument("--gpus-per-node", type=int, default=None, metavar="G",
                        help="GPUs on each synthetic node (default: the fleet's mix)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--base-port", type=int, default=0, metavar="P",
                        help="node i listens on P+i (default 0: free ports)")
    parser.add_argument("--token-file", type=Path, default=None, metavar="F",
                        help="where the operator token is written, mode 0600 "
                             "(default: <state dir>/simulate.token)")
    parser.add_argument("--nodes-file", type=Path, default=None, metavar="F",
                        help="where a [[nodes]] TOML snippet for the console is written "
                             "(default: <state dir>/simulate-nodes.toml)")
    parser.add_argument("--config", type=Path, default=None, metavar="PATH",
                        help="configuration file (limits, purge settle time)")


def nodes_toml(nodes: list[tuple[str, str]], token_file: Path) -> str:
    """The console's ``[[nodes]]`` entries for the running nodes."""
    lines = ["# gpufleet simulate: paste into the console's config.toml", ""]
    # json.dumps writes a valid TOML basic string, whatever the path holds (quotes, \\).
    for name, url in nodes:
        lines += ["[[nodes]]", f"name = {json.dumps(name)}", f"url = {json.dumps(url)}",
                  f"token_file = {json.dumps(str(token_file))}", ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from gpufleet.server.config import ConfigError, load_settings, state_dir

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.nodes < 1:
        print("gpufleet simulate: --nodes must be at least 1", file=sys.stderr)
        return 2
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"gpufleet simulate: {exc}", file=sys.stderr)
        return 2
    # Absolute, so the nodes file works from whatever folder the console starts in.
    token_file = (args.token_file or state_dir() / "simulate.token").absolute()
    nodes_file = (args.nodes_file or state_dir() / "simulate-nodes.toml").absolute()
    try:
        return asyncio.run(_simulate(settings, args, token_file, nodes_file))
    except OSError as exc:
        print(f"gpufleet simulate: {exc}", file=sys.stderr)
        return 1


async def _simulate(settings: object, args: argparse.Namespace, token_file: Path,
                    nodes_file: Path) -> int:
    import asyncio
    import secrets
    import shlex

    from gpufleet.server.app import ServerApp
    from gpufleet.server.auth import StaticKeyResolver
    from gpufleet.server.config import Settings
    from gpufleet.server.files import write_private_file
    from gpufleet.server.gpu.simulated import simulated_backends
    from gpufleet.server.http.signals import run_until_signalled

    assert isinstance(settings, Settings)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    write_private_file(token_file, token + "\n")
    resolver = StaticKeyResolver.operator(token, name="simulate")
    node_settings = settings.with_overrides({"sampler.enabled": False})
    apps: list[tuple[str, ServerApp]] = []
    try:
        for i, backend in enumerate(simulated_backends(args.nodes, args.gpus_per_node)):
            app = ServerApp(node_settings, backend=backend, store=None, key_resolver=resolver)
            await app.start(args.host, args.base_port + i if args.base_port else 0)
            apps.append((backend.node_name, app))
        listed = [(name, app.url) for name, app in apps]
        nodes_file.parent.mkdir(parents=True, exist_ok=True)
        nodes_file.write_text(nodes_toml(listed, token_file))
        # The token goes only to the 0600 file: a secret printed here would stay in
        # terminal scrollback and CI logs. The third line says how to use it.
        print(f"token_file {token_file}")
        print(f"nodes_file {nodes_file}")
        print(f'try curl -H "Authorization: Bearer $(cat {shlex.quote(str(token_file))})" '
              f"{listed[0][1]}/v1/gpu/status")
        for name, url in listed:
            print(f"{name} {url}")
        sys.stdout.flush()
    except BaseException:
        for _, app in apps:
            await app.stop()
        raise

    async def stop_others() -> None:
        await asyncio.gather(*(app.stop() for _, app in apps[1:]))

    # Signals stop the first node's server; the others follow in on_stop.
    return await run_until_signalled(apps[0][1].http, on_stop=stop_others)

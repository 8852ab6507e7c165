"""``gpufleet agent``: stream this machine's GPU telemetry to a gpufleet server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import ModuleType

    from gpufleet.server.config import Settings
    from gpufleet.server.gpu.base import GpuBackend

HELP = "Stream this machine's GPU telemetry to a gpufleet ingest server (spooled, exactly once)."
EXIT_CODES = """\
  0   stopped by SIGTERM or SIGINT (spooled samples stay for the next start);
      --once: delivered
  1   --once: samples stay in the spool (the server could not be reached);
      the spool is in use by another agent
  2   no GPU (without --simulate), or the server refused the agent (401/403:
      the key; 409: simulated samples to a server that stores real data)
  64  a bad setting, no server URL or no usable key file
"""

log = logging.getLogger("gpufleet.agent")

EXIT_USAGE = 64
EXIT_NO_GPU = 2


class KeyProblem(Exception):
    """The API key cannot be read, or is stored unsafely; the message says how to fix it."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", metavar="URL", help="ingest server base URL (or [agent] server, GPUFLEET_URL)")
    parser.add_argument("--key-file", type=Path, metavar="F",
                        help="file holding the API key, mode 0600 (or GPUFLEET_KEY)")
    parser.add_argument("--interval", type=float, metavar="S", help="seconds between samples (>= 1, default 60)")
    parser.add_argument("--config", type=Path, metavar="F", help="settings TOML ([agent] section)")
    parser.add_argument("--spool-dir", type=Path, metavar="DIR",
                        help="where undelivered batches wait, one folder per server, key and "
                             "real/simulated; after a rotation, the key's earlier folders are sent "
                             "once the server confirms the key (default: <state dir>/spool)")
    parser.add_argument("--once", action="store_true", help="one sample, deliver (or spool), exit")
    parser.add_argument("--simulate", action="store_true",
                        help="sample the simulated fleet; its samples are marked simulated, and a "
                             "server that stores real data refuses them")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every delivery attempt")


def read_key(key_file: Path | None, environ: dict[str, str]) -> str:
    """The API key from a private file, else GPUFLEET_KEY."""
    from gpufleet.server.client import KeyFileError, read_key_file

    if key_file is not None:
        try:
            return read_key_file(key_file)
        except KeyFileError as exc:
            raise KeyProblem(str(exc)) from None
    key = environ.get("GPUFLEET_KEY", "").strip()
    if not key:
        raise KeyProblem("no API key: pass --key-file F (mode 0600) or set GPUFLEET_KEY")
    return key


def open_agent_backend(*, simulate: bool, nvml_module: ModuleType | None = None) -> GpuBackend:
    """NVML's GPUs, or the simulated fleet only when asked: invented numbers must never feed chargeback.

    Raises BackendUnavailable (with the reason) when NVML finds no GPU and ``simulate`` is off.
    """
    from gpufleet.server.gpu.base import BackendUnavailable

    if simulate:
        from gpufleet.server.gpu.simulated import SimulatedBackend

        try:
            return SimulatedBackend()
        except Exception as exc:  # a broken fleet.toml: say why rather than crash with a traceback
            raise BackendUnavailable(f"the simulated fleet is not usable: {exc}") from exc
    from gpufleet.server.gpu.nvml import NvmlBackend

    return NvmlBackend(nvml_module)


def run(args: argparse.Namespace) -> int:
    from gpufleet.server.config import ConfigError, load_settings, state_dir

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if args.verbose:  # the agent's own detail, not every HTTP library's
        logging.getLogger("gpufleet").setLevel(logging.DEBUG)
    try:
        settings = load_settings(args.config, overrides={
            "agent.server": args.server,
            "agent.interval_s": args.interval,
            "agent.key_file": str(args.key_file) if args.key_file else None,
            "agent.spool_dir": str(args.spool_dir) if args.spool_dir else None,
        })
    except ConfigError as exc:
        print(f"gpufleet agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    agent = settings.agent
    server = agent.server or os.environ.get("GPUFLEET_URL")
    if not server:
        print("gpufleet agent: no server: pass --server URL (or set [agent] server, GPUFLEET_URL)",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        key = read_key(agent.key_file, dict(os.environ))
    except KeyProblem as exc:
        print(f"gpufleet agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    base = agent.spool_dir or state_dir() / "spool"
    return asyncio.run(_main(settings, server, key, base, once=args.once, simulate=args.simulate))


async def _main(
    settings: Settings, server: str, key: str, spool_base: Path, *, once: bool, simulate: bool
) -> int:
    from gpufleet.server.agent.adoption import Adoption
    from gpufleet.server.agent.attribution import ProcessAttributor
    from gpufleet.server.agent.delivery import MAX_BATCH_BYTES, Backoff
    from gpufleet.server.agent.destinations import claim, destination_dir, name_the_others
    from gpufleet.server.agent.runner import AgentRunner
    from gpufleet.server.agent.sampler import Sampler
    from gpufleet.server.agent.spool import Spool, SpoolLocked
    from gpufleet.server.client import AsyncGpuFleetClient
    from gpufleet.server.gpu.base import BackendUnavailable

    agent = settings.agent
    try:
        backend = await asyncio.to_thread(open_agent_backend, simulate=simulate)
    except BackendUnavailable as exc:
        log.error("no GPU to sample: %s. The agent does not report made-up numbers; "
                  "pass --simulate to send the simulated fleet (demos and tests only)", exc)
        return EXIT_NO_GPU
    # One spool per destination: nothing spooled for another server, key or kind goes out here.
    spool_dir = destination_dir(spool_base, server, key, simulated=simulate)
    try:
        spool = Spool(spool_dir, max_bytes=agent.spool_max_bytes)
    except SpoolLocked as exc:
        log.error("%s", exc)
        backend.close()
        return 1
    claim(spool_dir, server, key, simulated=simulate)
    client = AsyncGpuFleetClient(server, api_key=key, timeout=agent.request_timeout_s,
                                 simulated=simulate)
    # Folders of this key's earlier secrets (after a rotation) go out once the server
    # vouches for them; they are named, if they stay, when it has answered.
    adoption = Adoption(spool_base, spool_dir, server, simulated=simulate, client=client,
                        max_samples=agent.batch_max_samples, max_bytes=MAX_BATCH_BYTES,
                        backoff=Backoff(base_s=agent.retry_base_s, max_s=agent.retry_max_s))
    name_the_others(spool_base, spool_dir, besides=adoption.candidates)
    sampler = Sampler(backend, ProcessAttributor(agent))
    runner = AgentRunner(agent, sampler=sampler, spool=spool, client=client, adoption=adoption)
    source = "the simulated fleet" if simulate else "NVML"
    if once:
        log.info("agent: one sample of %s (--once) into %s, delivering to %s", source, spool_dir, server)
    else:
        log.info("agent: sampling %s every %g s into %s, delivering to %s",
                 source, agent.interval_s, spool_dir, server)
    try:
        if once:
            return await runner.run_once()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        return await runner.run(stop)
    finally:
        await client.aclose()
        adoption.close()
        spool.close()
        backend.close()

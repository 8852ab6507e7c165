"""``gpufleet serve``: this node's operator API plus the ingest/chargeback server over DuckDB."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

    from gpufleet.server.config import Settings
    from gpufleet.server.gpu.base import GpuBackend
    from gpufleet.server.store import MetricsStore

HELP = ("Run the gpufleet server: this node's GPU API, metrics ingest, chargeback and "
        "agent heartbeats over a local DuckDB store.")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
EXIT_CODES = """\
  0  stopped by SIGTERM or SIGINT: in-flight requests finished, queued writes
     committed
  1  cannot start: the address cannot be bound, or the store is locked or
     unreadable
  2  a bad setting, flag or TLS file (the store is left untouched)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None,
                        help="address to listen on (default 127.0.0.1: loopback only)")
    parser.add_argument("--port", type=int, default=None, help="port (default 8765; 0 picks one)")
    parser.add_argument("--config", type=Path, default=None, metavar="PATH",
                        help="TOML configuration (default: the platform config dir)")
    parser.add_argument("--db", type=Path, default=None, metavar="PATH",
                        help="DuckDB store (default: <data dir>/gpufleet.duckdb; with --simulate "
                             "<data dir>/gpufleet-simulated.duckdb)")
    parser.add_argument("--tls-cert", type=Path, default=None, metavar="FILE",
                        help="serve HTTPS with this certificate chain (PEM)")
    parser.add_argument("--tls-key", type=Path, default=None, metavar="FILE",
                        help="private key of --tls-cert (PEM)")
    parser.add_argument("--simulate", action="store_true", default=None,
                        help="serve the simulated fleet's local node (even when NVML finds GPUs) and "
                             "sample it into the store; without a GPU and without this "
                             "flag the simulated node is served but not sampled")
    parser.add_argument("--no-sampler", dest="sampler", action="store_false", default=None,
                        help="do not sample this node's GPUs into the store")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="stderr log level")


def settings_from(args: argparse.Namespace) -> Settings:
    from gpufleet.server.config import load_settings

    return load_settings(args.config, overrides={
        "server.host": args.host,
        "server.port": args.port,
        "server.db_path": str(args.db) if args.db else None,
        # --db names the store whichever it is; without it, --simulate gets the simulated store
        "server.simulated_db_path": str(args.db) if args.db else None,
        "server.tls_cert": str(args.tls_cert) if args.tls_cert else None,
        "server.tls_key": str(args.tls_key) if args.tls_key else None,
        "server.simulate": args.simulate,
        "sampler.enabled": args.sampler,
    })


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from gpufleet.server.config import ConfigError

    logging.basicConfig(level=args.log_level, stream=sys.stderr, format=LOG_FORMAT)
    log = logging.getLogger("gpufleet.server")
    # Everything the server writes is its owner's alone: the store, and DuckDB's .wal,
    # which is recreated at every checkpoint (a chmod after opening would not last).
    os.umask(0o077)
    try:
        settings = settings_from(args)
        # Before the store is opened (and perhaps migrated): a server that cannot start
        # must leave it untouched.
        check_tls_files(settings)
        check_listen_address(settings.server.host, settings.server.port)
    except (ConfigError, _SettingsError) as exc:
        print(f"gpufleet serve: {exc}", file=sys.stderr)
        return 2
    except _StartupError as exc:
        print(f"gpufleet serve: {exc}", file=sys.stderr)
        return 1
    settings = fit_open_files(settings)
    try:
        return asyncio.run(serve(settings))
    except _StartupError as exc:
        log.error("%s", exc)
        return 1


# files besides client connections: the store, its WAL, staging files, logs, the admin socket
_SPARE_FILES = 64


def fit_open_files(settings: Settings) -> Settings:
    """Make room for ``limits.max_connections`` under the open-file limit.

    The soft limit is raised towards the hard one; if that is still too low, the
    connection cap is lowered to fit (with a warning), so the server answers 503 past
    it instead of failing to accept with "Too many open files".
    """
    import logging
    import resource

    log = logging.getLogger("gpufleet.server")
    wanted = settings.limits.max_connections + _SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.debug("cannot raise the open-file limit to %d: %s", target, exc)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        cap = max(1, soft - _SPARE_FILES)
        log.warning("open-file limit %d leaves room for %d connections, not limits.max_connections=%d; "
                    "serving at most %d (raise it with ulimit -n)", soft, cap,
                    settings.limits.max_connections, cap)
        return settings.with_overrides({"limits.max_connections": cap})
    return settings


class _StartupError(Exception):
    """The server cannot start; the message says why (no traceback for the user)."""


class _SettingsError(Exception):
    """A setting the server cannot use (a TLS file, the port); exit 2 like a config error."""


def check_tls_files(settings: Settings) -> None:
    """Load the TLS certificate and key exactly as the server will, or say what is wrong."""
    import ssl

    from gpufleet.server.app import ssl_context_for

    cert, key = settings.server.tls_cert, settings.server.tls_key
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if path is None:
            continue
        try:
            path.open("rb").close()
        except OSError as exc:
            raise _SettingsError(f"{flag} {path}: {exc.strerror or exc}") from None
    try:
        ssl_context_for(settings)
    except ValueError as exc:  # only one of the pair given
        raise _SettingsError(str(exc)) from None
    except ssl.SSLError as exc:
        reason = exc.reason or exc.strerror or str(exc)
        raise _SettingsError(f"--tls-cert {cert} / --tls-key {key}: not a usable PEM "
                             f"certificate and matching private key ({reason})") from None
    except OSError as exc:
        raise _SettingsError(f"TLS files {cert}, {key}: {exc.strerror or exc}") from None


def check_listen_address(host: str, port: int) -> None:
    """Bind (and release) ``host:port`` as the server will, so a busy port fails before the store opens.

    The port could still be taken between this check and the real bind; that rare case
    is reported the same way, just after the store was opened.
    """
    import socket

    if not 0 <= port <= 65535:
        raise _SettingsError(f"--port {port}: must be between 0 and 65535")
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise _SettingsError(f"--host {host}: not an address of this machine ({reason})") from None
    for family, kind, proto, _, address in infos:
        try:
            with socket.socket(family, kind, proto) as probe:
                # Same options as asyncio's listener, so a port in TIME_WAIT passes here too.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind(address)
        except OSError as exc:
            raise _StartupError(f"cannot listen on {host}:{port}: "
                                f"{exc.strerror or exc}") from None


async def serve(settings: Settings) -> int:
    """Open the store and backend, serve until SIGTERM/SIGINT, then shut down cleanly."""
    import asyncio
    import logging

    from gpufleet.server.admin import start_admin_channel
    from gpufleet.server.app import ServerApp
    from gpufleet.server.files import make_private_dir
    from gpufleet.server.gpu.base import BackendUnavailable
    from gpufleet.server.gpu.select import open_backend
    from gpufleet.server.http.signals import run_until_signalled
    from gpufleet.server.runtimes import RuntimeConfigError
    from gpufleet.server.store import MetricsStore, StoreLockedError

    log = logging.getLogger("gpufleet.server")
    db_path = settings.server.resolved_db_path(simulated=settings.server.simulate)
    try:
        make_private_dir(db_path.parent)
        store = await asyncio.to_thread(
            MetricsStore.open, db_path, expected_interval_s=settings.pricing.expected_interval_s,
            idle_utilization_pct=settings.pricing.idle_utilization_pct)
    except StoreLockedError as exc:  # one plain line: who holds it and what to do
        raise _StartupError(f"{exc}; stop it first, or give this server a store of its own "
                            "with --db PATH") from None
    except Exception as exc:  # a corrupt database: say so, no traceback
        raise _StartupError(f"cannot open the store {db_path}: {exc}") from exc
    _say_what_the_store_holds(settings, store)
    try:
        try:
            backend = await asyncio.to_thread(open_backend, simulate=settings.server.simulate)
        except BackendUnavailable as exc:
            raise _StartupError(str(exc)) from exc
        settings = sampling_settings(settings, backend)
        try:
            try:
                app = ServerApp(settings, backend=backend, store=store)
            except RuntimeConfigError as exc:  # e.g. a simulated runtime on a real node
                raise _StartupError(f"[[runtimes]]: {exc}") from exc
            try:
                await app.start()
            except OSError as exc:
                raise _StartupError(f"cannot listen on {settings.server.host}:"
                                    f"{settings.server.port}: {exc}") from exc
            # Before the "serving" line: whoever waits for it can use `gpufleet keys` at once.
            admin = await start_admin_channel(app, store, db_path, "serve")
            # Whoever reads the "serving" line may signal at once: the stop must already be caught.
            stop = _catch_stop_signals()
            log.info("gpufleet serving %s (store %s)", app.url, db_path)
            if not await asyncio.to_thread(store.list_keys):
                log.warning("No API keys yet. Create one with: gpufleet keys create --name NAME "
                            "--scope operator,ingest,read --db %s", db_path)

            async def on_stop() -> None:
                await app.stop_sampler()
                if admin is not None:
                    await admin.stop()

            return await run_until_signalled(app.http, on_stop=on_stop, stop=stop)
        finally:
            backend.close()
    finally:
        await asyncio.to_thread(store.close)
        log.info("store closed")


def _say_what_the_store_holds(settings: Settings, store: MetricsStore) -> None:
    """A warning when reports from this store will say SIMULATED, and how to keep real data apart."""
    import logging

    log = logging.getLogger("gpufleet.server")
    if settings.server.simulate:
        log.info("simulated samples go into %s, and every report from it says so; "
                 "gpufleet keys and gpufleet report reach it with --db %s", store.path, store.path)
    elif store.simulated is not None:
        log.warning("the store %s holds simulated data (%s), and every report from it says so; "
                    "gpufleet demo reset --db %s removes the sample fleet's data from it",
                    store.path, ", ".join(store.simulated.sources), store.path)


def _catch_stop_signals() -> asyncio.Event:
    """An event SIGTERM/SIGINT set from now on (run_until_signalled takes over the handlers)."""
    import asyncio
    import contextlib
    import signal

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    return stop


def sampling_settings(settings: Settings, backend: GpuBackend) -> Settings:
    """``settings``, with the in-process sampler off when it would store invented numbers.

    Without a usable GPU the server still serves the simulated node (every body says
    ``simulated: true``), but its samples feed chargeback only when the simulation was
    asked for (``--simulate`` or ``server.simulate = true``): made-up GPU-hours must
    never be billed by accident.
    """
    import logging

    if not backend.simulated or settings.server.simulate:
        return settings
    log = logging.getLogger("gpufleet.server")
    if not settings.sampler.enabled:
        log.warning("No usable NVIDIA GPU: serving a SIMULATED node (simulated: true); "
                    "pass --simulate to serve it deliberately")
        return settings
    log.warning("No usable NVIDIA GPU: serving a SIMULATED node (simulated: true), and its "
                "samples are NOT stored; pass --simulate to sample it into the store")
    return settings.with_overrides({"sampler.enabled": False})

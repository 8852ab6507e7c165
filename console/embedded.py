"""Find or start the servers the console talks to: the local chargeback/hosts server and the demo fleet.

Call :func:`start_demo_or_connect` once before the app runs (or
:func:`start_demo_or_connect_async` from a running loop) and ``stop()`` the
returned :class:`Connections` when the app exits. The local server is, in order:

1. the configured one (``console.local_server_url``, default
   ``http://127.0.0.1:<server.port>``) if it answers. The default is used only when
   the socket listening on that port belongs to a process of our own user: on a
   shared GPU box anyone may bind the port first, and the console sends its key
   there. An explicitly configured URL is trusted as configured;
2. the server of the process holding the store of real data (``gpufleet serve`` on
   any port, or another console), found through that store's owner-only admin socket,
   which names its URL; the console's key for it is kept in a 0600 file and made
   through the same socket when the server does not know it. Without a GPU, the
   same for the simulated store next;
3. another console's embedded server, named by its discovery file in the data
   dir, if its process is alive and the server answers;
4. a server started here, inside this process, on ``127.0.0.1`` with an
   ephemeral port, with a generated local key (its secret in a 0600 file: the
   store keeps only hashes), over the store of real data, or without a GPU (or
   with ``server.simulate``) over the simulated store
   (``server.simulated_db_path``, default ``<data dir>/gpufleet-simulated.duckdb``),
   into which the sample month is loaded when it holds no recent usage: simulated
   data never enters the store that ``serve``, ``report`` and ``keys`` use by
   default. It serves the store's admin channel (``gpufleet keys`` and ``report``
   work while the console runs) and writes a discovery file (0600) until ``stop()``.

A store another process holds is never waited on for long: a gpufleet command or a
server still starting gets a few seconds, anything else is named at once
(:class:`EmbeddedServerError`, one plain line).

With no NVIDIA GPU (or ``server.simulate``) a small simulated fleet is served
from this process too, each node on its own loopback port with a static
operator token, and everything is flagged ``simulated``. When the local server
is this console's own, the demo nodes heartbeat and post samples into it, marked
simulated (:class:`console.demo_heartbeat.DemoHeartbeats`), and the sample month
never makes one of them its stale or offline host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import psutil

from gpufleet.console.config import NodeTarget, Secret
from gpufleet.server.config import Settings, data_dir
from gpufleet.server.files import write_private_file

if TYPE_CHECKING:
    from gpufleet.server.gpu.simulated import SimulatedBackend

log = logging.getLogger("gpufleet.console.embedded")

# One of each per store kind: a demo console and a real one never share a server by mistake.
DISCOVERY_FILE = "console-server.json"
SIMULATED_DISCOVERY_FILE = "console-server-simulated.json"
KEY_FILE = "console-key"
SIMULATED_KEY_FILE = "console-key-simulated"
LOCAL_KEY_SCOPES = ["operator", "ingest", "read"]
DEMO_NODE_COUNT = 4
PROBE_TIMEOUT_S = 1.0
# A gpufleet command may hold the store for a moment (keys, report), or a server may have
# opened it and not yet started its admin channel: that long, then the holder is named.
STORE_BUSY_WAIT_S = 5.0
STORE_BUSY_POLL_S = 0.2
RECENT_USAGE_DAYS = 30

Origin = Literal["configured", "shared", "embedded"]


class EmbeddedServerError(Exception):
    """No local server could be found or started; the message says why."""


@dataclass
class Connections:
    """What the console talks to, and how to let it go.

    ``nodes`` are the demo fleet's targets (empty with a real GPU); ``simulated`` says the
    local data and the demo fleet are simulated, for the on-screen badge.
    """

    local_url: str
    local_key: str | None = field(repr=False)
    nodes: list[NodeTarget]
    simulated: bool
    origin: Origin
    _stoppers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def stop(self) -> None:
        """Stop what this console started (servers, discovery file); idempotent."""
        while self._stoppers:
            stopper = self._stoppers.pop()
            try:
                stopper()
            except Exception:
                log.exception("stopping an embedded server failed")


def discovery_path(directory: Path | None = None, *, simulated: bool = False) -> Path:
    return (directory or data_dir()) / (SIMULATED_DISCOVERY_FILE if simulated else DISCOVERY_FILE)


def key_path(directory: Path, *, simulated: bool = False) -> Path:
    """The file holding the console's key for the real (or the simulated) store's server."""
    return directory / (SIMULATED_KEY_FILE if simulated else KEY_FILE)


def server_answers(url: str, *, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when a gpufleet server answers the unauthenticated ingest health check at ``url``."""
    from gpufleet.server.client import GpuFleetClient, GpuFleetError

    try:
        with GpuFleetClient(url, timeout=timeout) as client:
            client.ingest_health()
    except GpuFleetError:
        return False
    return True


def listener_is_ours(port: int) -> bool:
    """True when every socket listening on loopback ``port`` belongs to a process of our uid.

    A socket of another user shows no PID (or one we may not inspect): not ours.
    """
    try:
        connections = psutil.net_connections(kind="inet")
    except (psutil.Error, OSError):
        return False
    pids = [c.pid for c in connections
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
            and _reaches_loopback(c.laddr.ip)]
    if not pids:
        return False
    uid = os.getuid()
    for pid in pids:
        if pid is None:
            return False
        try:
            if psutil.Process(pid).uids().real != uid:
                return False
        except psutil.Error:
            return False
    return True


def _reaches_loopback(ip: str) -> bool:
    """Whether a socket bound to ``ip`` accepts loopback connections (loopback or any address)."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _default_url_is_ours(url: str) -> bool:
    """The default local URL, when on loopback, must be served by our own user's process."""
    parts = urlsplit(url)
    try:
        loopback = parts.hostname == "localhost" or ipaddress.ip_address(parts.hostname or "").is_loopback
    except ValueError:
        loopback = False
    if not loopback or parts.port is None:
        return True  # not on this machine's loopback: nothing local to check
    if listener_is_ours(parts.port):
        return True
    log.warning("%s answers but is not a process of this user; not sending the console's key "
                "there, starting an embedded server instead", url)
    return False


def nvidia_gpu_present() -> bool:
    """True when NVML loads and finds at least one GPU (the server layer owns pynvml)."""
    from gpufleet.server.gpu.base import BackendUnavailable
    from gpufleet.server.gpu.nvml import NvmlBackend

    try:
        NvmlBackend().close()
    except BackendUnavailable:
        return False
    return True


def _read_key(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _read_discovery(directory: Path, simulated: bool) -> dict[str, Any] | None:
    try:
        info = json.loads(discovery_path(directory, simulated=simulated).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and {"url", "pid"} <= info.keys() else None


def _shared_server(directory: Path, *, simulated: bool, timeout: float) -> tuple[str, str | None] | None:
    """Another console's server, when its discovery file names a live process that answers."""
    info = _read_discovery(directory, simulated)
    if info is None or not psutil.pid_exists(int(info["pid"])):
        return None
    if not server_answers(str(info["url"]), timeout=timeout):
        return None
    key_file = info.get("key_file")
    return str(info["url"]), _read_key(Path(key_file)) if key_file else None


def _key_name() -> str:
    return f"console-local-{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(3)}"


def _local_key(store: Any, path: Path, account: str) -> str:
    """The console's key: the one in the key file when the store still accepts it, else a new one."""
    secret = _read_key(path)
    if secret is not None:
        info = store.authenticate(secret)
        if info is not None and info.revoked_at is None:
            return secret
    created = store.create_key(_key_name(), list(LOCAL_KEY_SCOPES), account)
    write_private_file(path, created.key)
    return created.key


def _loopback(url: str) -> str:
    """A server listening on every address is reached on loopback."""
    parts = urlsplit(url)
    try:
        unspecified = ipaddress.ip_address(parts.hostname or "").is_unspecified
    except ValueError:
        return url
    if not unspecified:
        return url
    host = "[::1]" if ":" in (parts.hostname or "") else "127.0.0.1"
    return parts._replace(netloc=f"{host}:{parts.port}").geturl()


def _key_works(url: str, secret: str, timeout: float) -> bool:
    """Whether the server knows the key (an answer other than 401/403 counts as yes)."""
    from gpufleet.server.client import Forbidden, GpuFleetClient, GpuFleetError, Unauthorized

    try:
        with GpuFleetClient(url, api_key=secret, timeout=timeout) as client:
            client.hosts()
    except (Unauthorized, Forbidden):
        return False
    except GpuFleetError:
        return True
    return True


def _held_store_server(db_path: Path, key_file: Path, account: str, *,
                       timeout: float) -> tuple[str, str] | None:
    """The server of whoever holds ``db_path`` (serve on any port, a console), via its admin socket.

    Returns its URL and a key it accepts: the key file's, else one made through the socket.
    """
    from gpufleet.server.admin_client import AdminKeys, AdminUnavailableError

    if not admin_socket_present(db_path):
        return None
    try:
        with AdminKeys(db_path) as admin:
            raw_url = admin.info().get("url")
            if not isinstance(raw_url, str) or not server_answers(_loopback(raw_url), timeout=timeout):
                return None
            url = _loopback(raw_url)
            secret = _read_key(key_file)
            if secret is None or not _key_works(url, secret, timeout):
                created = admin.create_key(_key_name(), list(LOCAL_KEY_SCOPES), account)
                write_private_file(key_file, created.key)
                secret = created.key
                log.info("made the console a key in %s's server through its admin channel", db_path)
    except (AdminUnavailableError, OSError, ValueError) as exc:
        log.info("the admin channel of %s is not usable: %s", db_path, exc)
        return None
    return url, secret


def admin_socket_present(db_path: Path) -> bool:
    from gpufleet.server.admin import SOCKET_NAME, admin_dir

    return (admin_dir(db_path) / SOCKET_NAME).exists()


def _load_sample_if_empty(store: Any, settings: Settings, live_hosts: list[str]) -> None:
    """Load the sample month unless the store holds recent usage.

    ``live_hosts`` are the demo nodes this console keeps reporting: the sample
    data never makes one of them its stale or offline host.
    """
    from gpufleet.server.sample import load_sample_month

    today = datetime.now(UTC).date()
    report = store.chargeback(settings.server.account, today - timedelta(days=RECENT_USAGE_DAYS),
                              today, settings.pricing, datetime.now(UTC))
    if not report.teams:
        inserted = load_sample_month(store, settings.server.account,
                                     heartbeat_interval_s=settings.server.heartbeat_interval_s,
                                     live_hosts=live_hosts)
        log.info("loaded the sample month into the console's store: %d samples", inserted)


def _open_store_or_find_holder(settings: Settings, directory: Path, db_path: Path, *,
                               simulated: bool, timeout: float
                               ) -> tuple[Any, None] | tuple[None, tuple[str, str | None]]:
    """Open the store, or reach the server of the process holding it; name the holder otherwise."""
    from gpufleet.server.store import MetricsStore, StoreLockedError
    from gpufleet.server.store.holder import holder_command

    db_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    deadline = time.monotonic() + STORE_BUSY_WAIT_S
    while True:
        try:
            store = MetricsStore.open(db_path,
                                      expected_interval_s=settings.pricing.expected_interval_s,
                                      idle_utilization_pct=settings.pricing.idle_utilization_pct)
            return store, None
        except StoreLockedError as exc:
            found = (_held_store_server(db_path, key_path(directory, simulated=simulated),
                                        settings.server.account, timeout=timeout)
                     or _shared_server(directory, simulated=simulated, timeout=timeout))
            if found is not None:
                return None, found
            command = holder_command(exc.pid)
            if command is None or time.monotonic() >= deadline:
                raise EmbeddedServerError(_locked_line(exc, command)) from None
            time.sleep(STORE_BUSY_POLL_S)  # a gpufleet command finishing, or a server starting


def _locked_line(exc: Exception, command: str | None) -> str:
    """What holds the store and what to do, in one line (never DuckDB's text)."""
    if command in ("serve", "console"):
        return (f"{exc}, and it offers no admin channel to reach its server through; quit it, or "
                "set [console] local_server_url to that server's URL")
    if command is not None:
        return f"{exc}; run the console again once it has finished"
    return f"{exc}; stop it, or give the console a store of its own (server.db_path)"


def _start_local_server(settings: Settings, directory: Path, *, simulated: bool,
                        timeout: float, connections: Connections, live_hosts: list[str]) -> None:
    from gpufleet.server.embedded import EmbeddedServer
    from gpufleet.server.store.simulated import CONSOLE_DEMO

    db_path = settings.server.resolved_db_path(simulated=simulated)
    store, shared = _open_store_or_find_holder(settings, directory, db_path, simulated=simulated,
                                               timeout=timeout)
    if shared is not None:
        connections.local_url, connections.local_key = shared
        connections.origin = "shared"
        return
    connections._stoppers.append(store.close)
    keys = key_path(directory, simulated=simulated)
    key = _local_key(store, keys, settings.server.account)
    if simulated:
        store.mark_simulated(CONSOLE_DEMO)
        _load_sample_if_empty(store, settings, live_hosts)
    # No backend passed: the server opens NVML, or the simulated node when simulated, and closes it.
    local = settings.with_overrides({"server.host": "127.0.0.1", "server.port": 0,
                                     "server.simulate": simulated})
    server = EmbeddedServer(local, store=store, admin_holder="console")
    url = server.start("127.0.0.1", 0)
    connections._stoppers.append(server.stop)
    write_private_file(discovery_path(directory, simulated=simulated), json.dumps(
        {"url": url, "pid": os.getpid(), "key_file": str(keys), "store": str(db_path),
         "simulated": simulated, "started_at": datetime.now(UTC).isoformat()}))
    connections._stoppers.append(lambda: _remove_discovery(directory, url, simulated))
    connections.local_url, connections.local_key, connections.origin = url, key, "embedded"
    log.info("started an embedded server at %s over %s", url, db_path)


def _running_server(settings: Settings, directory: Path, *, simulated: bool,
                    timeout: float) -> tuple[str, str | None] | None:
    """A server some process already runs over the real store (or, without a GPU, the simulated one)."""
    kinds = (False, True) if simulated else (False,)
    for kind in kinds:
        db_path = settings.server.resolved_db_path(simulated=kind)
        found = (_held_store_server(db_path, key_path(directory, simulated=kind),
                                    settings.server.account, timeout=timeout)
                 or _shared_server(directory, simulated=kind, timeout=timeout))
        if found is not None:
            return found
    return None


def _start_demo_fleet(settings: Settings, backends: list[SimulatedBackend],
                      connections: Connections) -> list[NodeTarget]:
    """One operator-only server per simulated node, each on its own loopback port.

    When the local server is our own, the nodes' heartbeats and samples are kept fresh in
    it for as long as the console runs, so Hosts agrees with the fleet screen.
    """
    from gpufleet.console.demo_heartbeat import DemoHeartbeats, DemoHost, beat_interval
    from gpufleet.server.auth import StaticKeyResolver
    from gpufleet.server.embedded import EmbeddedServer

    token = secrets.token_urlsafe(24)
    local = settings.with_overrides({"server.host": "127.0.0.1", "server.port": 0})
    nodes: list[NodeTarget] = []
    hosts: list[DemoHost] = []
    for backend in backends:
        name = backend.node_name
        server = EmbeddedServer(local, backend=backend, store=None,
                                key_resolver=StaticKeyResolver.operator(token, name="console-demo"))
        url = server.start()
        connections._stoppers.append(server.stop)
        nodes.append(NodeTarget(name=name, url=url, token=Secret(token)))
        hosts.append(DemoHost(name, len(backend.fleet.node(name).gpus), backend))
    log.info("serving a simulated demo fleet of %d nodes", len(nodes))
    if connections.origin == "embedded":
        # Only into our own server: a configured or shared one is not ours to write hosts into.
        # At least one sample per expected interval, so the demo GPUs' usage is counted whole.
        interval_s = min(beat_interval(settings.server.heartbeat_interval_s),
                         settings.pricing.expected_interval_s)
        heartbeats = DemoHeartbeats(connections.local_url, connections.local_key, hosts,
                                    interval_s=interval_s)
        heartbeats.start()
        connections._stoppers.append(heartbeats.stop)
    return nodes


def _demo_backends(count: int) -> list[SimulatedBackend]:
    from gpufleet.server.gpu.simulated import simulated_backends

    return simulated_backends(count) if count > 0 else []


def _remove_discovery(directory: Path, url: str, simulated: bool) -> None:
    # Only our own file: a later console may have replaced it with its own server's.
    info = _read_discovery(directory, simulated)
    if info is not None and info.get("url") == url and int(info["pid"]) == os.getpid():
        discovery_path(directory, simulated=simulated).unlink(missing_ok=True)


def start_demo_or_connect(settings: Settings, *, directory: Path | None = None,
                          gpu_present: bool | None = None, demo_nodes: int = DEMO_NODE_COUNT,
                          probe_timeout_s: float = PROBE_TIMEOUT_S) -> Connections:
    """Find or start the local server and, without a GPU, the demo fleet. Blocking."""
    directory = directory or data_dir()
    if gpu_present is None:
        gpu_present = nvidia_gpu_present()
    simulated = settings.server.simulate or not gpu_present
    explicit = settings.console.local_server_url
    configured = (explicit or f"http://127.0.0.1:{settings.server.port}").rstrip("/")
    connections = Connections(configured, None, [], simulated, "configured")
    backends = _demo_backends(demo_nodes) if simulated else []
    try:
        if server_answers(configured, timeout=probe_timeout_s) and (
                explicit or _default_url_is_ours(configured)):
            connections.local_key = os.environ.get("GPUFLEET_KEY") or _read_key(directory / KEY_FILE)
        elif (running := _running_server(settings, directory, simulated=simulated,
                                         timeout=probe_timeout_s)) is not None:
            connections.local_url, connections.local_key = running
            connections.origin = "shared"
        else:
            _start_local_server(settings, directory, simulated=simulated, timeout=probe_timeout_s,
                                connections=connections, live_hosts=[b.node_name for b in backends])
        if backends:
            connections.nodes = _start_demo_fleet(settings, backends, connections)
    except BaseException:
        connections.stop()
        raise
    return connections


async def start_demo_or_connect_async(settings: Settings, **kwargs: Any) -> Connections:
    """:func:`start_demo_or_connect` in a thread, for callers already inside an event loop."""
    return await asyncio.to_thread(start_demo_or_connect, settings, **kwargs)

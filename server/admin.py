"""The local admin channel: ``gpufleet keys`` and ``gpufleet report`` while a server holds the store.

DuckDB lets one process write a store, so while ``gpufleet serve`` runs, the
``keys`` command (and ``report``, read-only) asks the server to do the work. The server listens for that on a
Unix socket, ``<store>.admin/sock``, that only its own OS user can reach: the
folder is 0700 and owned by that user (the channel is not started otherwise), the
socket is 0600, and every connection's peer must have the server's uid
(SO_PEERCRED). These routes live on their own router and are never served over TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpufleet.server.api.export import ExportAnswers
from gpufleet.server.api.simulated import HEADER as SIMULATED_HEADER
from gpufleet.server.config import Limits, Pricing
from gpufleet.server.http.router import Router
from gpufleet.server.http.server import HttpServer
from gpufleet.server.http.types import HttpError, Request, Response
from gpufleet.server.schemas import KeyInfo, utc_now

if TYPE_CHECKING:
    from gpufleet.server.app import ServerApp
    from gpufleet.server.auth import KeyResolver
    from gpufleet.server.store import MetricsStore

log = logging.getLogger("gpufleet.admin")

SOCKET_NAME = "sock"
INFO_PATH = "/admin/v1/info"
KEYS_PATH = "/admin/v1/keys"
CHARGEBACK_PATH = "/admin/v1/chargeback"  # read-only: the report, as GET /v1/chargeback/report
EXPORT_PATH = "/admin/v1/export"  # read-only: days, samples, usage as GET /v1/export/*, any account
_MAX_SUN_PATH = 107  # sun_path is 108 bytes with its terminating NUL
# A response carrying a new secret must not be kept by any cache (as server/api/keys.py).
SECRET_HEADERS: tuple[tuple[str, str], ...] = (("Cache-Control", "no-store"), ("Pragma", "no-cache"))


class AdminChannelError(OSError):
    """The admin channel's folder or socket is not safe (or not usable) for this user."""


def admin_dir(db_path: Path) -> Path:
    """The owner-only folder beside the store that holds its admin socket."""
    return db_path.with_name(db_path.name + ".admin")


def open_private_dir(folder: Path) -> int:
    """An fd of ``folder``, or AdminChannelError unless it is a real directory of ours, mode 0700.

    Everything after this works through the fd, so the folder cannot be swapped for
    another (or for a symlink) between the check and the use.
    """
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:  # O_NOFOLLOW: a symlink fails with ELOOP or, with O_DIRECTORY, ENOTDIR
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        what = "a symbolic link" if os.path.islink(folder) else "not a directory"
        raise AdminChannelError(f"{folder} is {what}") from None
    info = os.fstat(fd)
    problem = None
    if info.st_uid != os.getuid():
        problem = f"{folder} belongs to uid {info.st_uid}, not to this user"
    elif info.st_mode & 0o077:
        problem = (f"{folder} is accessible to group or others "
                   f"(mode {stat.S_IMODE(info.st_mode):o}); it must be 0700")
    if problem:
        os.close(fd)
        raise AdminChannelError(problem)
    return fd


def connectable_path(socket_path: Path, dir_fd: int) -> str:
    """How bind/connect reach ``socket_path``: through the checked folder's fd where /proc allows.

    That also keeps the address short: sun_path holds only 107 bytes.
    """
    if os.path.isdir(f"/proc/self/fd/{dir_fd}"):
        return f"/proc/self/fd/{dir_fd}/{socket_path.name}"
    text = os.fsdecode(socket_path)
    if len(os.fsencode(text)) > _MAX_SUN_PATH:
        raise AdminChannelError(f"{socket_path} is too long for a Unix socket address")
    return text


def peer_uid(sock: Any) -> int:
    """The uid of the process at the other end of a Unix socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def _same_user(sock: Any) -> bool:
    try:
        allowed = peer_uid(sock) == os.getuid()
    except OSError:
        allowed = False
    if not allowed:
        log.warning("admin channel: refused a connection from another user")
    return allowed


class AdminChannel:
    """Serves key create/list/revoke/rotate and chargeback reads for one store on its owner-only socket.

    ``pricing`` is the server's own, so a report read here costs what the HTTP API says.
    """

    def __init__(self, store: MetricsStore, db_path: Path, limits: Limits,
                 resolver: KeyResolver | None = None, pricing: Pricing | None = None, *,
                 holder: str = "serve", url: str | None = None) -> None:
        """``holder`` (``serve`` or ``console``) and the server's ``url`` are told to whoever asks."""
        self._store = store
        self._resolver = resolver
        self._pricing = pricing or Pricing()
        self.holder = holder
        self.url = url
        self.db_path = db_path
        self.folder = admin_dir(db_path)
        self.socket_path = self.folder / SOCKET_NAME
        self._inode: int | None = None
        self._dir_fd: int | None = None
        router = Router()
        router.get(INFO_PATH, self._info, name="adminInfo")
        router.get(KEYS_PATH, self._list, name="adminListKeys")
        router.post(KEYS_PATH, self._create, name="adminCreateKey")
        router.post(KEYS_PATH + "/revoke", self._revoke, name="adminRevokeKey")
        router.post(KEYS_PATH + "/rotate", self._rotate, name="adminRotateKey")
        router.get(CHARGEBACK_PATH, self._chargeback, name="adminChargeback")
        self._export = ExportAnswers(store, utc_now)
        for what in ("days", "samples", "usage"):
            router.get(f"{EXPORT_PATH}/{what}", self._exporting(what), name=f"adminExport_{what}")
        self.http = HttpServer(router, limits)

    async def start(self) -> None:
        """Create the folder (0700) and socket (0600) and listen; AdminChannelError if unsafe."""
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.folder, 0o700)
        self._dir_fd = open_private_dir(self.folder)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # A socket left by a killed server: this process holds the store, so it is stale.
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(self._lstat().st_mode):
                    os.unlink(SOCKET_NAME, dir_fd=self._dir_fd)
            sock.bind(connectable_path(self.socket_path, self._dir_fd))
            os.chmod(SOCKET_NAME, 0o600, dir_fd=self._dir_fd)  # the folder keeps others out; this too
            self._inode = self._lstat().st_ino
            sock.listen()
            await self.http.start_unix(sock, allow_peer=_same_user)
        except BaseException:
            sock.close()
            self._remove_socket()
            raise
        log.info("admin channel on %s", self.socket_path)

    async def stop(self) -> None:
        """Stop serving, then remove the socket (and the folder when empty)."""
        await self.http.shutdown()
        self._remove_socket()

    def _lstat(self) -> os.stat_result:
        assert self._dir_fd is not None
        return os.stat(SOCKET_NAME, dir_fd=self._dir_fd, follow_symlinks=False)

    def _remove_socket(self) -> None:
        if self._dir_fd is None:
            return
        with contextlib.suppress(OSError):
            if self._inode is not None and self._lstat().st_ino == self._inode:
                os.unlink(SOCKET_NAME, dir_fd=self._dir_fd)
        os.close(self._dir_fd)
        self._dir_fd = None
        with contextlib.suppress(OSError):  # only when empty, and only if it is still a folder
            os.rmdir(self.folder)

    # -- routes ---------------------------------------------------------------------------

    async def _info(self, request: Request) -> Response:
        return Response.json({"pid": os.getpid(), "store": str(self.db_path.resolve()),
                              "holder": self.holder, "url": self.url,
                              "simulated": self._store.simulated is not None})

    async def _list(self, request: Request) -> Response:
        keys = await asyncio.to_thread(self._store.list_keys, request.query.get("account") or None)
        return Response.json([k.model_dump(mode="json") for k in keys])

    async def _create(self, request: Request) -> Response:
        body = _fields(request, name=str, scopes=list, account=str)
        created = await _keys_call(self._store.create_key, body["name"], body["scopes"], body["account"])
        log.info("admin channel: key %r created in account %r", created.info.name, created.info.account)
        return Response.json(created, status=201, headers=list(SECRET_HEADERS))

    async def _revoke(self, request: Request) -> Response:
        body = _fields(request, key=str, account=(str, type(None)))
        info = await _keys_call(self._store.revoke_key, body["key"], body["account"])
        self._forget(info)
        log.info("admin channel: key %r of account %r revoked", info.name, info.account)
        return Response.json(info)

    async def _rotate(self, request: Request) -> Response:
        body = _fields(request, key=str, account=(str, type(None)))
        created = await _keys_call(self._store.rotate_key, body["key"], body["account"])
        self._forget(created.info)  # the same key (id) with a new secret: the old one stops now
        log.info("admin channel: key %r of account %r rotated", created.info.name, created.info.account)
        return Response.json(created, headers=list(SECRET_HEADERS))

    async def _chargeback(self, request: Request) -> Response:
        """``?account=&from=&to=&format=json|csv``: the same report and checks as the HTTP API."""
        from gpufleet.server.api.chargeback import report_period
        from gpufleet.server.store import ReportRangeError

        start, end = report_period(request.query)
        account = request.query.get("account") or ""
        if not account:
            raise HttpError(400, "Query parameter account is required")
        fmt = request.query.get("format") or "json"
        if fmt not in ("json", "csv"):
            raise HttpError(400, "Query parameter format must be json or csv")
        method = self._store.chargeback_csv if fmt == "csv" else self._store.chargeback
        try:
            result = await asyncio.to_thread(method, account, start, end, self._pricing)
        except ReportRangeError as exc:
            raise HttpError(400, str(exc)) from None
        marked = (SIMULATED_HEADER, "true" if self._store.simulated is not None else "false")
        if isinstance(result, str):
            return Response.text(result, content_type="text/csv; charset=utf-8", headers=[marked])
        return Response.json(result, headers=[marked])

    def _exporting(self, what: str) -> Any:
        """``gpufleet export --db``'s answers: ``?account=`` (all accounts' days without it)."""
        answer = getattr(self._export, what)

        async def handler(request: Request) -> Response:
            account = request.query.get("account") or None
            if account is None and what != "days":  # the days of every account, or of one
                raise HttpError(400, "Query parameter account is required")
            return await answer(account, request.query)

        return handler

    def _forget(self, info: KeyInfo) -> None:
        if self._resolver is not None:
            self._resolver.forget(info)


def _fields(request: Request, **types: Any) -> dict[str, Any]:
    """The JSON object body's named fields, each of the given type, or 400."""
    body = request.json()
    if not isinstance(body, dict):
        raise HttpError(400, "the body must be a JSON object")
    values = {}
    for name, kind in types.items():
        value = body.get(name)
        if not isinstance(value, kind):
            raise HttpError(400, f"field {name!r} is missing or of the wrong type")
        values[name] = value
    return values


async def _keys_call(method: Any, *args: Any) -> Any:
    """Run a store key method in a thread; its user errors become 4xx with their message."""
    from gpufleet.server.store import KeyNameTakenError, UnknownKeyError

    try:
        return await asyncio.to_thread(method, *args)
    except UnknownKeyError as exc:
        raise HttpError(404, str(exc)) from None
    except KeyNameTakenError as exc:
        raise HttpError(409, str(exc)) from None
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None


async def start_admin_channel(app: ServerApp, store: MetricsStore, db_path: Path,
                              holder: str) -> AdminChannel | None:
    """The admin channel of the server ``holder`` (``serve`` or ``console``) runs, or None.

    A folder that is not safe, or a system without Unix sockets, is a warning: the server
    serves anyway, and ``keys``/``report`` then say that it must be stopped first.
    """
    admin = AdminChannel(store, db_path, app.settings.limits, resolver=app.context.resolver,
                         pricing=app.settings.pricing, holder=holder, url=app.url)
    try:
        await admin.start()
    except OSError as exc:
        logging.getLogger("gpufleet.server").warning(
            "admin channel not started (gpufleet keys and a local gpufleet report need "
            "this %s stopped): %s", holder, exc)
        return None
    return admin

"""The commands' side of the admin channel: a running server's key and report API over its socket.

``AdminKeys`` has the store's key methods (``create_key``, ``list_keys``,
``revoke_key``, ``rotate_key``) and raises the store's own errors, so the command
prints the same thing whichever way the keys were reached. ``AdminReports`` reads
the chargeback report (JSON or CSV) for ``gpufleet report``. Both talk only to a
socket in an owner-only folder of this user, served by the process holding the store.
"""

from __future__ import annotations

import os
import stat
from datetime import date
from pathlib import Path
from typing import Any, Self

import httpx

from gpufleet.server.admin import (
    CHARGEBACK_PATH,
    EXPORT_PATH,
    INFO_PATH,
    KEYS_PATH,
    SOCKET_NAME,
    AdminChannelError,
    admin_dir,
    connectable_path,
    open_private_dir,
)
from gpufleet.server.client import CsvReport, is_simulated
from gpufleet.server.schemas import ChargebackReport, KeyCreated, KeyInfo

TIMEOUT_S = 30.0


class AdminUnavailableError(Exception):
    """No usable admin channel for this store (none, unsafe, or not the server holding it)."""


class AdminClient:
    """A connection to the admin socket of the server that holds ``db_path``."""

    PURPOSE = "talk to"  # completes "it has no admin channel to ... through"

    def __init__(self, db_path: Path, server_pid: int | None = None) -> None:
        folder = admin_dir(db_path)
        missing = f"it has no admin channel to {self.PURPOSE} through"
        try:
            self._dir_fd = open_private_dir(folder)
        except FileNotFoundError:
            raise AdminUnavailableError(missing) from None
        except AdminChannelError as exc:
            raise AdminUnavailableError(f"its admin channel is not safe to use: {exc}") from None
        try:
            info = os.stat(SOCKET_NAME, dir_fd=self._dir_fd, follow_symlinks=False)
            if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.getuid():
                raise AdminUnavailableError(f"{folder / SOCKET_NAME} is not this user's admin socket")
            address = connectable_path(folder / SOCKET_NAME, self._dir_fd)
        except FileNotFoundError:
            os.close(self._dir_fd)
            raise AdminUnavailableError(missing) from None
        except (AdminUnavailableError, AdminChannelError) as exc:
            os.close(self._dir_fd)
            raise AdminUnavailableError(str(exc)) from None
        transport = httpx.HTTPTransport(uds=address)
        self._client = httpx.Client(transport=transport, base_url="http://gpufleet-admin",
                                    timeout=TIMEOUT_S)
        try:
            served = self._get(INFO_PATH)
        except BaseException:
            self.close()
            raise
        self._info: dict[str, Any] = served if isinstance(served, dict) else {}
        if server_pid is not None and served.get("pid") != server_pid:
            self.close()
            raise AdminUnavailableError(f"its admin socket is served by pid {served.get('pid')}, "
                                        f"not by pid {server_pid} that holds the store")

    def close(self) -> None:
        self._client.close()
        os.close(self._dir_fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        return self._answer(lambda: self._client.get(path, params=params))

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        return self._answer(lambda: self._client.post(path, json=body))

    @staticmethod
    def _answer(send: Any) -> Any:
        """The JSON answer; a 400's message as ValueError, anything else unusable as AdminUnavailableError."""
        return _payload(AdminClient._response(send))

    @staticmethod
    def _response(send: Any) -> httpx.Response:
        try:
            return send()
        except httpx.HTTPError as exc:
            raise AdminUnavailableError(f"its admin channel did not answer: {exc}") from None

    def info(self) -> dict[str, Any]:
        """Who serves this socket: ``pid``, ``store``, ``holder`` (serve or console), ``url``, ``simulated``."""
        return self._info


def _payload(response: httpx.Response) -> Any:
    from gpufleet.server.store import KeyNameTakenError, UnknownKeyError

    if response.is_success:
        return response.json() if "json" in response.headers.get("content-type", "") \
            else response.text
    try:
        payload = response.json()
    except ValueError:
        payload = {}
    message = payload.get("error") if isinstance(payload, dict) else None
    message = message or f"the server answered {response.status_code}"
    if response.status_code == 404 and response.request.url.path.startswith(KEYS_PATH):
        raise UnknownKeyError(message)
    if response.status_code == 409:
        raise KeyNameTakenError(message)
    if response.status_code == 400:
        raise ValueError(message)
    raise AdminUnavailableError(f"its admin channel failed: {message}")


class AdminKeys(AdminClient):
    """Key management through the admin socket of the server that holds ``db_path``."""

    PURPOSE = "manage keys"

    def create_key(self, name: str, scopes: list[str], account: str) -> KeyCreated:
        return KeyCreated.model_validate(
            self._post(KEYS_PATH, {"name": name, "scopes": scopes, "account": account}))

    def list_keys(self, account: str | None = None) -> list[KeyInfo]:
        params = {"account": account} if account else None
        return [KeyInfo.model_validate(k) for k in self._get(KEYS_PATH, params)]

    def revoke_key(self, id_or_name: str, account: str | None = None) -> KeyInfo:
        return KeyInfo.model_validate(
            self._post(KEYS_PATH + "/revoke", {"key": id_or_name, "account": account}))

    def rotate_key(self, key_id: str, account: str | None = None) -> KeyCreated:
        return KeyCreated.model_validate(
            self._post(KEYS_PATH + "/rotate", {"key": key_id, "account": account}))


class AdminReports(AdminClient):
    """The chargeback report, computed by the server that holds ``db_path`` with its pricing."""

    PURPOSE = "read reports"

    def chargeback(self, account: str, start: date, end: date) -> ChargebackReport:
        return ChargebackReport.model_validate(self._get(CHARGEBACK_PATH, _period(account, start, end)))

    def chargeback_csv(self, account: str, start: date, end: date) -> CsvReport:
        params = {**_period(account, start, end), "format": "csv"}
        response = self._response(lambda: self._client.get(CHARGEBACK_PATH, params=params))
        text = _payload(response)
        if not isinstance(text, str):
            raise AdminUnavailableError("its admin channel did not answer with CSV")
        return CsvReport(text, is_simulated(response.headers))


def _period(account: str, start: date, end: date) -> dict[str, str]:
    return {"account": account, "from": start.isoformat(), "to": end.isoformat()}


class AdminExport(AdminClient):
    """Parquet export answers from the server that holds ``db_path`` (``gpufleet export --db``)."""

    PURPOSE = "export"
    PREFIX = EXPORT_PATH

    @property
    def http(self) -> httpx.Client:
        return self._client

"""Where ``gpufleet export`` reads from: the store itself, or a server's export answers over HTTP.

``StoreSource`` runs DuckDB's COPY on a store this process opened; ``ServerSource``
asks a server for each day's file (``/v1/export/*`` with a read key, or the admin
channel's ``/admin/v1/export/*`` while a local server holds the store) and streams it
to disk, so the client holds no more than a chunk in memory.
"""

from __future__ import annotations

import contextlib
import time
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from gpufleet.server.api.export import RECEIVED_MAX_HEADER, ROWS_HEADER
from gpufleet.server.exporter import ExportError
from gpufleet.server.store.export import DayState, StoreExport

if TYPE_CHECKING:
    from gpufleet.server.store import MetricsStore

MAX_RETRY_WAIT_S = 60.0  # a 429's Retry-After is honoured up to this, then the export stops


class StoreSource:
    """A store this process holds: every account, or one."""

    def __init__(self, store: MetricsStore, account: str | None) -> None:
        self._export = StoreExport(store)
        self._account = account
        self.simulated = store.simulated is not None

    def days(self, first: date | None, last: date | None) -> list[DayState]:
        self._export.barrier()  # the rollup must hold every stored sample before it is read
        bounds = self._export.bounds()
        if bounds is None:
            return []
        return self._export.days(self._account, first or bounds[0], last or bounds[1])

    def samples(self, dest: Path, account: str, day: date, after_us: int) -> tuple[int, int | None]:
        return self._export.copy_samples(dest, account, day, after_us)

    def usage(self, dest: Path, account: str, day: date) -> None:
        self._export.copy_usage(dest, account, day)


class ServerSource:
    """A server's export answers under ``prefix`` (``/v1/export`` or the admin channel's)."""

    def __init__(self, client: httpx.Client, prefix: str, *, accounts: bool = False,
                 account: str | None = None) -> None:
        """``accounts``: the server serves any account (the admin channel), so each request
        names one, and ``account`` (None: all) picks which; the HTTP API uses the key's."""
        self._client = client
        self._prefix = prefix
        self._accounts = accounts
        self._account = account
        self.simulated = False  # known once days() has been answered

    def _params(self, account: str | None, **params: Any) -> dict[str, str]:
        found = {k: str(v) for k, v in params.items() if v is not None}
        if self._accounts and account is not None:
            found["account"] = account
        return found

    def days(self, first: date | None, last: date | None) -> list[DayState]:
        params = self._params(self._account, **{"from": first and first.isoformat(),
                                                "to": last and last.isoformat()})
        with contextlib.closing(self._send("days", params)) as response:
            response.read()
            body = response.json()
            self.simulated = bool(body.get("simulated"))
            return [DayState.from_json(d) for d in body["days"]]

    def samples(self, dest: Path, account: str, day: date, after_us: int) -> tuple[int, int | None]:
        with contextlib.closing(self._send("samples", self._params(account, day=day.isoformat(),
                                                            after=after_us))) as response:
            if response.status_code == 204:
                return 0, None
            self._save(response, dest)
            newest = response.headers.get(RECEIVED_MAX_HEADER)
            return int(response.headers.get(ROWS_HEADER, "0")), int(newest) if newest else None

    def usage(self, dest: Path, account: str, day: date) -> None:
        with contextlib.closing(self._send("usage", self._params(account, day=day.isoformat()))) as response:
            if response.status_code != 204:
                self._save(response, dest)

    @staticmethod
    def _save(response: httpx.Response, dest: Path) -> None:
        with open(dest, "wb") as out:
            for chunk in response.iter_bytes(1 << 20):
                out.write(chunk)

    def _send(self, what: str, params: dict[str, str]) -> Any:
        """A streamed GET, retried after a 429's Retry-After; any other error is an ExportError."""
        url = f"{self._prefix}/{what}"
        while True:
            request = self._client.build_request("GET", url, params=params)
            try:
                response = self._client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise ExportError(f"{what}: the server did not answer: {exc}") from None
            if response.status_code == 429:
                wait = _retry_after(response)
                response.close()
                if wait > MAX_RETRY_WAIT_S:
                    raise ExportError(f"{what}: rate limited for {wait:.0f} s; run again later")
                time.sleep(wait)
                continue
            if response.status_code >= 400:
                response.read()
                response.close()
                raise ExportError(f"{what}: {response.status_code} {_error_text(response)}")
            return response


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return str(body.get("error", body)) if isinstance(body, dict) else str(body)[:200]

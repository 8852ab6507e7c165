"""The gpufleet SDK: sync and async httpx clients of the /v1 API with typed errors.

Operator routes (``/v1/gpu/*``, key rotation) send ``Authorization: Bearer <key>``;
the collector routes (ingest, heartbeat, report, hosts) send ``X-API-Key`` as their
document shows. The server accepts either header on every authenticated route.
"""

from __future__ import annotations

import email.utils
import json
import os
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

import httpx
from pydantic import BaseModel

from gpufleet.server.schemas import (
    SIMULATED_HEADER,
    ChargebackReport,
    GpuMemoryResponse,
    GpuStatusResponse,
    Heartbeat,
    HeartbeatResult,
    HostsResponse,
    IngestHealth,
    IngestResult,
    KeyCreated,
    KeyInfo,
    PurgeResult,
    SignalName,
    SignalResult,
    format_utc,
)

DEFAULT_URL = "http://127.0.0.1:8765"
URL_ENV = "GPUFLEET_URL"
KEY_ENV = "GPUFLEET_KEY"


class CsvReport(NamedTuple):
    """The chargeback CSV and whether its store holds simulated data (the response header)."""

    text: str
    simulated: bool


def is_simulated(headers: Mapping[str, str]) -> bool:
    """Whether a chargeback answer's headers say its store holds simulated data."""
    return str(headers.get(SIMULATED_HEADER, "")).strip().lower() == "true"

ModelT = TypeVar("ModelT", bound=BaseModel)
AuthStyle = Literal["bearer", "x-api-key", "none"]


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class KeyFileError(ValueError):
    """A key file that is missing, empty, or readable by group or others."""


def read_key_file(path: Path) -> str:
    """The secret in a private key file; refuses a file group or others can access."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"key file {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
        )
    try:
        secret = path.read_text().strip()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    if not secret:
        raise KeyFileError(f"key file {path} is empty")
    return secret


class GpuFleetError(Exception):
    """A request failed; ``status`` is the HTTP status (None when no answer came)."""

    def __init__(self, status: int | None, message: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status} {message}" if status is not None else message)
        self.status = status
        self.message = message
        self.headers: dict[str, str] = {k.lower(): v for k, v in (headers or {}).items()}


class BadRequest(GpuFleetError):
    """400: the server rejected the request body or parameters."""


class Unauthorized(GpuFleetError):
    """401: no key, or one the server does not know."""


class Forbidden(GpuFleetError):
    """403: the key lacks the scope this route needs."""


class NotFound(GpuFleetError):
    """404: no such route (an older server?), or no such thing (a PID that is not a GPU process)."""


class Conflict(GpuFleetError):
    """409: the server will not take this (simulated data sent to a store of real data)."""


class PayloadTooLarge(GpuFleetError):
    """413: the body is over the server's limit."""


class RateLimited(GpuFleetError):
    """429: slow down; ``retry_after`` says for how many seconds, when the server said."""

    def __init__(self, status: int | None, message: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status, message, headers)
        self.retry_after = parse_retry_after(self.headers.get("retry-after"))


class ServerError(GpuFleetError):
    """5xx: the server failed; retry with back-off (``retry_after`` seconds when it said)."""

    def __init__(self, status: int | None, message: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status, message, headers)
        self.retry_after = parse_retry_after(self.headers.get("retry-after"))


class InsufficientStorage(ServerError):
    """507: the server's disk is full; nothing was stored, send the same request again later."""


class ConnectionFailed(GpuFleetError):
    """The server could not be reached (refused, reset, DNS, TLS)."""


class RequestTimeout(ConnectionFailed):
    """No answer within the client's timeout (or the server answered 408)."""


_ERRORS_BY_STATUS: dict[int, type[GpuFleetError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    408: RequestTimeout,
    413: PayloadTooLarge,
    429: RateLimited,
    507: InsufficientStorage,
}


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_for(response: httpx.Response) -> GpuFleetError:
    """The typed exception for a non-2xx response, carrying the server's message."""
    message = response.reason_phrase or "HTTP error"
    try:
        payload = response.json()
        if isinstance(payload, dict) and isinstance(payload.get("error"), str):
            message = payload["error"]
    except ValueError:
        text = response.text.strip()
        if text:
            message = text[:500]
    status = response.status_code
    cls = _ERRORS_BY_STATUS.get(status) or (ServerError if status >= 500 else GpuFleetError)
    return cls(status, message, response.headers)


# --------------------------------------------------------------------------
# Requests, shared by both clients
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Call:
    method: str
    path: str
    auth: AuthStyle
    params: dict[str, str] = field(default_factory=dict)
    json_body: Any = None
    content: bytes | None = None


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.microsecond == 0:
            return format_utc(value)
        utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return utc.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode_samples(samples: list[dict[str, Any]] | bytes) -> bytes:
    """An ingest body: raw bytes pass through; dicts (datetimes allowed) become JSON."""
    if isinstance(samples, bytes | bytearray | memoryview):
        return bytes(samples)
    return json.dumps(samples, default=_json_default, separators=(",", ":"),
                      allow_nan=False).encode()


def _report_params(from_: date, to: date, fmt: str) -> dict[str, str]:
    return {"from": from_.isoformat(), "to": to.isoformat(), "format": fmt}


def _ingest_call(samples: list[dict[str, Any]] | bytes) -> _Call:
    return _Call("POST", "/v1/metrics/ingest", "x-api-key", content=encode_samples(samples))


def _purge_body(force: bool, gpu_indices: list[int] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"force": force}
    if gpu_indices is not None:
        body["gpu_indices"] = list(gpu_indices)
    return body


def _signal_call(pid: int, signal: SignalName) -> _Call:
    if isinstance(pid, bool) or not isinstance(pid, int) or pid < 0:
        raise ValueError(f"pid must be a non-negative integer, not {pid!r}")
    return _Call("POST", f"/v1/gpu/processes/{pid}/signal", "bearer", json_body={"signal": signal})


class _ClientBase:
    def __init__(self, base_url: str | None, api_key: str | None,
                 timeout: float | httpx.Timeout, simulated: bool = False) -> None:
        self.base_url = (base_url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get(KEY_ENV) or None
        self.timeout = timeout
        self.simulated = simulated

    def _headers(self, call: _Call) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.simulated:  # what this client sends is made up: a real store answers 409
            headers[SIMULATED_HEADER] = "true"
        if call.json_body is not None or call.content is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key and call.auth == "bearer":
            headers["Authorization"] = f"Bearer {self.api_key}"
        elif self.api_key and call.auth == "x-api-key":
            headers["X-API-Key"] = self.api_key
        return headers

    def _content(self, call: _Call) -> bytes | None:
        if call.content is not None:
            return call.content
        if call.json_body is not None:
            return json.dumps(call.json_body, default=_json_default, allow_nan=False).encode()
        return None

    @staticmethod
    def _check(response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            raise error_for(response)
        return response

    @staticmethod
    def _parse(response: httpx.Response, model: type[ModelT]) -> ModelT:
        try:
            return model.model_validate_json(response.content)
        except ValueError as exc:
            raise GpuFleetError(response.status_code,
                                f"Unexpected response body for {model.__name__}: {exc}") from None


def _transport_error(exc: httpx.TransportError, base_url: str) -> GpuFleetError:
    if isinstance(exc, httpx.TimeoutException):
        return RequestTimeout(None, f"Timed out talking to {base_url}: {type(exc).__name__}")
    return ConnectionFailed(None, f"Cannot reach {base_url}: {exc or type(exc).__name__}")


# --------------------------------------------------------------------------
# Sync client
# --------------------------------------------------------------------------


class GpuFleetClient(_ClientBase):
    """Blocking client; use as a context manager or call ``close()``."""

    def __init__(self, base_url: str | None = None, *, api_key: str | None = None,
                 timeout: float | httpx.Timeout = 5.0,
                 transport: httpx.BaseTransport | None = None, simulated: bool = False) -> None:
        """``simulated``: every request says it carries simulated data (X-Gpufleet-Simulated)."""
        super().__init__(base_url, api_key, timeout, simulated)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    def __enter__(self) -> GpuFleetClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call) -> httpx.Response:
        try:
            response = self._http.request(call.method, call.path, params=call.params or None,
                                          headers=self._headers(call), content=self._content(call))
        except httpx.TransportError as exc:
            raise _transport_error(exc, self.base_url) from None
        return self._check(response)

    def _model(self, call: _Call, model: type[ModelT]) -> ModelT:
        return self._parse(self._send(call), model)

    # Operator GPU API (Bearer)
    def get_gpu_status(self) -> GpuStatusResponse:
        return self._model(_Call("GET", "/v1/gpu/status", "bearer"), GpuStatusResponse)

    def get_gpu_memory(self) -> GpuMemoryResponse:
        return self._model(_Call("GET", "/v1/gpu/memory", "bearer"), GpuMemoryResponse)

    def purge_gpu(self, force: bool = False, gpu_indices: list[int] | None = None) -> PurgeResult:
        call = _Call("POST", "/v1/gpu/purge", "bearer", json_body=_purge_body(force, gpu_indices))
        return self._model(call, PurgeResult)

    def signal_process(self, pid: int, signal: SignalName = "TERM") -> SignalResult:
        """Send TERM, INT or KILL to one GPU process of the node (404: not one now; 403: refused)."""
        return self._model(_signal_call(pid, signal), SignalResult)

    def rotate_key(self) -> KeyCreated:
        return self._model(_Call("POST", "/v1/keys/rotate", "bearer"), KeyCreated)

    def own_key(self) -> KeyInfo:
        """Which key this client's secret is (id, name, account; the same across rotations)."""
        return self._model(_Call("GET", "/v1/keys/self", "bearer"), KeyInfo)

    # Collector API (X-API-Key)
    def ingest(self, samples: list[dict[str, Any]] | bytes) -> IngestResult:
        return self._model(_ingest_call(samples), IngestResult)

    def ingest_health(self) -> IngestHealth:
        return self._model(_Call("GET", "/v1/metrics/ingest", "none"), IngestHealth)

    def heartbeat(self, hb: Heartbeat) -> HeartbeatResult:
        call = _Call("POST", "/v1/agent/heartbeat", "x-api-key", json_body=hb.model_dump(mode="json"))
        return self._model(call, HeartbeatResult)

    def hosts(self) -> HostsResponse:
        return self._model(_Call("GET", "/v1/agent/hosts", "x-api-key"), HostsResponse)

    def chargeback_report(self, from_: date, to: date) -> ChargebackReport:
        call = _Call("GET", "/v1/chargeback/report", "x-api-key", _report_params(from_, to, "json"))
        return self._model(call, ChargebackReport)

    def chargeback_csv(self, from_: date, to: date) -> str:
        return self.chargeback_csv_report(from_, to).text

    def chargeback_csv_report(self, from_: date, to: date) -> CsvReport:
        """The CSV with the X-Gpufleet-Simulated answer (the columns cannot say it)."""
        call = _Call("GET", "/v1/chargeback/report", "x-api-key", _report_params(from_, to, "csv"))
        response = self._send(call)
        return CsvReport(response.text, is_simulated(response.headers))

    def openapi(self) -> dict[str, Any]:
        return self._send(_Call("GET", "/v1/openapi.json", "none")).json()


# --------------------------------------------------------------------------
# Async client
# --------------------------------------------------------------------------


class AsyncGpuFleetClient(_ClientBase):
    """The same API for asyncio; ``await aclose()`` or use ``async with``."""

    def __init__(self, base_url: str | None = None, *, api_key: str | None = None,
                 timeout: float | httpx.Timeout = 5.0,
                 transport: httpx.AsyncBaseTransport | None = None, simulated: bool = False) -> None:
        """``simulated``: every request says it carries simulated data (X-Gpufleet-Simulated)."""
        super().__init__(base_url, api_key, timeout, simulated)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=transport)

    async def __aenter__(self) -> AsyncGpuFleetClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call) -> httpx.Response:
        try:
            response = await self._http.request(call.method, call.path, params=call.params or None,
                                                headers=self._headers(call),
                                                content=self._content(call))
        except httpx.TransportError as exc:
            raise _transport_error(exc, self.base_url) from None
        return self._check(response)

    async def _model(self, call: _Call, model: type[ModelT]) -> ModelT:
        return self._parse(await self._send(call), model)

    async def get_gpu_status(self) -> GpuStatusResponse:
        return await self._model(_Call("GET", "/v1/gpu/status", "bearer"), GpuStatusResponse)

    async def get_gpu_memory(self) -> GpuMemoryResponse:
        return await self._model(_Call("GET", "/v1/gpu/memory", "bearer"), GpuMemoryResponse)

    async def purge_gpu(self, force: bool = False,
                        gpu_indices: list[int] | None = None) -> PurgeResult:
        call = _Call("POST", "/v1/gpu/purge", "bearer", json_body=_purge_body(force, gpu_indices))
        return await self._model(call, PurgeResult)

    async def signal_process(self, pid: int, signal: SignalName = "TERM") -> SignalResult:
        return await self._model(_signal_call(pid, signal), SignalResult)

    async def rotate_key(self) -> KeyCreated:
        return await self._model(_Call("POST", "/v1/keys/rotate", "bearer"), KeyCreated)

    async def own_key(self) -> KeyInfo:
        """Which key this client's secret is (id, name, account; the same across rotations)."""
        return await self._model(_Call("GET", "/v1/keys/self", "bearer"), KeyInfo)

    async def ingest(self, samples: list[dict[str, Any]] | bytes) -> IngestResult:
        return await self._model(_ingest_call(samples), IngestResult)

    async def ingest_health(self) -> IngestHealth:
        return await self._model(_Call("GET", "/v1/metrics/ingest", "none"), IngestHealth)

    async def heartbeat(self, hb: Heartbeat) -> HeartbeatResult:
        call = _Call("POST", "/v1/agent/heartbeat", "x-api-key", json_body=hb.model_dump(mode="json"))
        return await self._model(call, HeartbeatResult)

    async def hosts(self) -> HostsResponse:
        return await self._model(_Call("GET", "/v1/agent/hosts", "x-api-key"), HostsResponse)

    async def chargeback_report(self, from_: date, to: date) -> ChargebackReport:
        call = _Call("GET", "/v1/chargeback/report", "x-api-key", _report_params(from_, to, "json"))
        return await self._model(call, ChargebackReport)

    async def chargeback_csv(self, from_: date, to: date) -> str:
        return (await self.chargeback_csv_report(from_, to)).text

    async def chargeback_csv_report(self, from_: date, to: date) -> CsvReport:
        """The CSV with the X-Gpufleet-Simulated answer (the columns cannot say it)."""
        call = _Call("GET", "/v1/chargeback/report", "x-api-key", _report_params(from_, to, "csv"))
        response = await self._send(call)
        return CsvReport(response.text, is_simulated(response.headers))

    async def openapi(self) -> dict[str, Any]:
        return (await self._send(_Call("GET", "/v1/openapi.json", "none"))).json()

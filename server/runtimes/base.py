"""The purge adapter interface: something that holds models in GPU memory and can let them go."""

from __future__ import annotations

import abc
import json
import ssl
from functools import cache
from typing import Any

import httpx

from gpufleet.server.schemas import LoadedModel


class RuntimeAdapterError(Exception):
    """A runtime could not list or unload; the message says which runtime and why."""


class ModelGone(RuntimeAdapterError):
    """The model let go on its own before the unload (the message says how): not an error."""


class RuntimeAdapter(abc.ABC):
    """One runtime on this node: lists what it has loaded and unloads it on request."""

    name: str
    # Unloads of this runtime's models may run together (signals to separate processes).
    parallel_unload: bool = False

    @abc.abstractmethod
    async def list_models(self) -> list[LoadedModel]:
        """What this runtime holds now; raises RuntimeAdapterError when it cannot tell."""

    @abc.abstractmethod
    async def unload(self, model: LoadedModel, *, force: bool) -> str:
        """Unload one model and return the action text; raises RuntimeAdapterError on failure."""

    def in_use_reason(self, model: LoadedModel) -> str:
        """Why ``model`` counts as in use, for the purge's skip message."""
        return "in use"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


@cache
def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle costs ~30 ms; a client per call would pay it every time.
    return httpx.create_ssl_context()


def runtime_client(timeout_s: float) -> httpx.AsyncClient:
    """A short-lived client for one runtime call; proxies from the environment are ignored."""
    return httpx.AsyncClient(timeout=timeout_s, trust_env=False, verify=_ssl_context())


async def request_json(client: httpx.AsyncClient, method: str, url: str, *,
                       runtime: str, body: Any = None) -> Any:
    """One JSON call to a runtime's HTTP API; every failure becomes a RuntimeAdapterError."""
    try:
        response = await client.request(method, url, json=body)
    except httpx.TimeoutException:
        raise RuntimeAdapterError(f"{runtime}: {method} {_path(url)} timed out") from None
    except httpx.HTTPError as exc:
        raise RuntimeAdapterError(f"{runtime}: cannot reach {_origin(url)}: {exc}") from None
    if response.status_code >= 400:
        raise RuntimeAdapterError(
            f"{runtime}: {method} {_path(url)} answered {response.status_code}: "
            f"{_error_text(response)}"
        )
    text = response.text.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        # Ollama may stream NDJSON; the last line carries the outcome.
        try:
            return json.loads(text.splitlines()[-1])
        except ValueError:
            raise RuntimeAdapterError(
                f"{runtime}: {method} {_path(url)} answered something that is not JSON"
            ) from None


def _error_text(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        return payload["error"][:200]
    return str(payload)[:200]


def _origin(url: str) -> str:
    parsed = httpx.URL(url)
    return f"{parsed.scheme}://{parsed.host}:{parsed.port}" if parsed.port else f"{parsed.scheme}://{parsed.host}"


def _path(url: str) -> str:
    return httpx.URL(url).path

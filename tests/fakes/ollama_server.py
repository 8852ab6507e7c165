"""A fake Ollama server on 127.0.0.1:0 speaking Ollama's real /api/ps and /api/generate shapes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from tests.fakes.loopback import LoopbackJsonServer

MiB = 1024 * 1024
PACIFIC = timezone(timedelta(hours=-7))
FOREVER = timedelta(days=365 * 290)  # keep_alive -1: Ollama reports an expiry centuries away


@dataclass
class OllamaModel:
    name: str
    size_vram_mib: int
    keep_alive: timedelta = timedelta(minutes=5)  # Ollama's default
    size_mib: int | None = None  # defaults to size_vram_mib: fully on the GPU

    def ps_entry(self, now: datetime) -> dict[str, Any]:
        size = (self.size_mib or self.size_vram_mib) * MiB
        # Go writes nine fraction digits and the server's local offset; so does the fake.
        local = (now + self.keep_alive).astimezone(PACIFIC).isoformat(timespec="microseconds")
        expires = local[:-6] + "123" + local[-6:]
        return {
            "name": self.name,
            "model": self.name,
            "size": size,
            "digest": "a2af6cc3eb7fa8be8504abaf9b04e88f17a119ec3f04a3addf55f92841195f5a",
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": self.name.split(":")[0].split("-")[0],
                "families": [self.name.split(":")[0].split("-")[0]],
                "parameter_size": "27B",
                "quantization_level": "Q4_K_M",
            },
            "expires_at": expires,
            "size_vram": self.size_vram_mib * MiB,
            "context_length": 4096,
        }


@dataclass
class _State:
    loaded: dict[str, OllamaModel] = field(default_factory=dict)
    fail_unload: dict[str, tuple[int, str]] = field(default_factory=dict)
    stay_loaded: set[str] = field(default_factory=set)  # a running request keeps it resident
    ps_failure: tuple[int, str] | None = None
    requests: list[tuple[str, str, Any]] = field(default_factory=list)


class FakeOllama(LoopbackJsonServer):
    """``with FakeOllama() as ollama: ollama.load("qwen", 20480); OllamaAdapter(ollama.url)``."""

    thread_name = "fake-ollama"
    bad_json_error = "invalid character in JSON body"

    def __init__(self) -> None:
        self.state = _State()
        super().__init__()

    def encode(self, payload: Any) -> tuple[bytes, str | None]:
        return json.dumps(payload).encode(), "application/json; charset=utf-8"

    # -- control
    def load(self, name: str, size_vram_mib: int, *, keep_alive: timedelta | None = None) -> None:
        with self.lock:
            self.state.loaded[name] = OllamaModel(name, size_vram_mib,
                                                  keep_alive or timedelta(minutes=5))

    def pin(self, name: str, size_vram_mib: int) -> None:
        """Load as ``keep_alive: -1`` does: resident until told otherwise."""
        self.load(name, size_vram_mib, keep_alive=FOREVER)

    def fail_unload(self, name: str, status: int = 500, message: str = "llama runner crashed") -> None:
        with self.lock:
            self.state.fail_unload[name] = (status, message)

    def keep_loaded(self, name: str) -> None:
        with self.lock:
            self.state.stay_loaded.add(name)

    def fail_ps(self, status: int = 500, message: str = "internal error") -> None:
        with self.lock:
            self.state.ps_failure = (status, message)

    @property
    def loaded(self) -> list[str]:
        with self.lock:
            return list(self.state.loaded)

    @property
    def requests(self) -> list[tuple[str, str, Any]]:
        with self.lock:
            return list(self.state.requests)

    # -- protocol
    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        with self.lock:
            self.state.requests.append((method, path, body))
            if method == "GET" and path == "/api/ps":
                if self.state.ps_failure:
                    status, message = self.state.ps_failure
                    return status, {"error": message}
                now = datetime.now(UTC)
                return 200, {"models": [m.ps_entry(now) for m in self.state.loaded.values()]}
            if method == "POST" and path == "/api/generate":
                return self._generate(body)
            if path in ("/api/ps", "/api/generate"):
                return 405, {"error": "method not allowed"}
            return 404, {"error": "404 page not found"}

    def _generate(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict) or not body.get("model"):
            return 400, {"error": "model is required"}
        name = body["model"]
        if name in self.state.fail_unload:
            status, message = self.state.fail_unload[name]
            return status, {"error": message}
        if name not in self.state.loaded:
            return 404, {"error": f"model '{name}' not found"}
        if body.get("keep_alive") in (0, "0", "0s", "0m"):
            if name not in self.state.stay_loaded:
                del self.state.loaded[name]
            return 200, {
                "model": name,
                "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "response": "",
                "done": True,
                "done_reason": "unload",
            }
        return 200, {"model": name, "response": "", "done": True, "done_reason": "load"}

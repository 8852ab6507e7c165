"""A fake Triton Inference Server on 127.0.0.1:0: the model repository and statistics extensions."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from tests.fakes.loopback import LoopbackJsonServer

MiB = 1024 * 1024


@dataclass
class TritonModel:
    name: str
    gpu_mib: int | None = None  # reported in statistics' memory_usage when known
    gpu_id: int = 0
    versions: tuple[str, ...] = ("1",)
    state: str = "READY"
    reason: str = ""
    last_inference_ms: int = 0  # 0: never ran an inference
    inference_count: int = 0

    def index_entries(self) -> list[dict[str, Any]]:
        return [{"name": self.name, "version": v, "state": self.state, "reason": self.reason}
                for v in self.versions]

    def stats_entries(self) -> list[dict[str, Any]]:
        duration = {"count": self.inference_count, "ns": self.inference_count * 1_500_000}
        zero = {"count": 0, "ns": 0}
        memory = ([{"type": "GPU", "id": self.gpu_id, "byte_size": self.gpu_mib * MiB}]
                  if self.gpu_mib is not None else [])
        return [{
            "name": self.name,
            "version": v,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.inference_count,
            "inference_stats": {
                "success": duration, "fail": zero, "queue": duration,
                "compute_input": duration, "compute_infer": duration,
                "compute_output": duration, "cache_hit": zero, "cache_miss": zero,
            },
            "response_stats": {},
            "batch_stats": [],
            "memory_usage": memory,
        } for v in self.versions]


@dataclass
class _State:
    models: dict[str, TritonModel] = field(default_factory=dict)
    fail_unload: dict[str, tuple[int, str]] = field(default_factory=dict)
    stats_failure: tuple[int, str] | None = None
    requests: list[tuple[str, str, Any]] = field(default_factory=list)


class FakeTriton(LoopbackJsonServer):
    """``with FakeTriton() as triton: triton.load("resnet", 2048); TritonAdapter(triton.url)``."""

    thread_name = "fake-triton"
    bad_json_error = "failed to parse the request JSON buffer"

    def __init__(self) -> None:
        self.state = _State()
        super().__init__()

    def encode(self, payload: Any) -> tuple[bytes, str | None]:
        # Triton answers a successful unload with 200 and an empty body.
        if payload is None:
            return b"", None
        return json.dumps(payload).encode(), "application/json"

    # -- control
    def load(self, name: str, gpu_mib: int | None = None, *, gpu_id: int = 0,
             versions: tuple[str, ...] = ("1",), busy: bool = False) -> None:
        """A READY model; ``busy`` means it ran an inference just now."""
        last = int(time.time() * 1000) if busy else 0
        with self.lock:
            self.state.models[name] = TritonModel(name, gpu_mib, gpu_id, versions,
                                                  last_inference_ms=last,
                                                  inference_count=64 if busy else 0)

    def add_unavailable(self, name: str) -> None:
        with self.lock:
            self.state.models[name] = TritonModel(name, state="UNAVAILABLE", reason="unloaded")

    def fail_unload(self, name: str, status: int = 400, message: str | None = None) -> None:
        with self.lock:
            self.state.fail_unload[name] = (status, message or f"failed to unload '{name}'")

    def fail_stats(self, status: int = 400, message: str = "statistics are disabled") -> None:
        with self.lock:
            self.state.stats_failure = (status, message)

    @property
    def ready(self) -> list[str]:
        with self.lock:
            return [m.name for m in self.state.models.values() if m.state == "READY"]

    @property
    def requests(self) -> list[tuple[str, str, Any]]:
        with self.lock:
            return list(self.state.requests)

    # -- protocol
    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        with self.lock:
            self.state.requests.append((method, path, body))
            parts = [unquote(p) for p in path.strip("/").split("/")]
            if method == "POST" and parts == ["v2", "repository", "index"]:
                ready_only = isinstance(body, dict) and body.get("ready") is True
                return 200, [e for m in self.state.models.values() for e in m.index_entries()
                             if not ready_only or m.state == "READY"]
            if method == "POST" and len(parts) == 5 and parts[:3] == ["v2", "repository", "models"] \
                    and parts[4] == "unload":
                return self._unload(parts[3])
            if method == "GET" and parts[0:2] == ["v2", "models"] and parts[-1] == "stats":
                return self._stats(parts[2] if len(parts) == 4 else None)
            return 404, {"error": f"not found: {path}"}

    def _unload(self, name: str) -> tuple[int, Any]:
        if name in self.state.fail_unload:
            status, message = self.state.fail_unload[name]
            return status, {"error": message}
        model = self.state.models.get(name)
        if model is None:
            return 400, {"error": f"failed to unload '{name}', no version is available"}
        model.state, model.reason = "UNAVAILABLE", "unloaded"
        return 200, None

    def _stats(self, name: str | None) -> tuple[int, Any]:
        if self.state.stats_failure:
            status, message = self.state.stats_failure
            return status, {"error": message}
        ready = [m for m in self.state.models.values() if m.state == "READY"]
        if name is not None:
            ready = [m for m in ready if m.name == name]
            if not ready:
                return 400, {"error": f"requested model '{name}' is not available"}
        return 200, {"model_stats": [e for m in ready for e in m.stats_entries()]}

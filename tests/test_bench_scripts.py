"""The bench scripts' own parsing of command output (the benches themselves run by hand)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_first_node_url_is_found_whatever_comes_before_it() -> None:
    bench = _load("bench_gpu_status")
    output = [
        "token_file /tmp/x/token\n",
        "nodes_file /tmp/x/nodes.toml\n",
        'try curl -H "Authorization: Bearer $(cat /tmp/x/token)" http://127.0.0.1:4001/v1/gpu/status\n',
        "a new hint line http://127.0.0.1:9/\n",
        "ws-gpu-01 http://127.0.0.1:4001\n",
        "ws-gpu-02 http://127.0.0.1:4002\n",
    ]
    assert bench.first_node_url(iter(output)) == "http://127.0.0.1:4001"
    assert bench.first_node_url(iter(output[4:])) == "http://127.0.0.1:4001"
    with pytest.raises(RuntimeError, match="no node line"):
        bench.first_node_url(iter(output[:4]))

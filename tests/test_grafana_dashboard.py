"""The Grafana dashboard in docs/grafana queries only series gpufleet serves, in valid PromQL."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.api_server import api_settings, store_app

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana" / "gpufleet-dashboard.json"
_NAME = re.compile(r"\b(DCGM_FI_[A-Z0-9_]+|gpufleet_[a-z0-9_]+)\b")


def _exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    assert exprs and doc["uid"] and {v["name"] for v in doc["templating"]["list"]} == {"datasource", "Hostname"}
    return exprs


async def test_every_series_the_dashboard_queries_is_served(tmp_path: Path) -> None:
    async with store_app(tmp_path / "g.duckdb", api_settings(**{"server.simulate": True})) as srv:
        await srv.http.get("/v1/gpu/status", headers=srv.auth("operator"))
        text = (await srv.http.get("/metrics")).text
    served = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    served |= {f"{name}_{suffix}" for name in served for suffix in ("bucket", "sum", "count")}
    wanted = {name for expr in _exprs() for name in _NAME.findall(expr)}
    assert wanted <= served, wanted - served


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"gpufleet:dashboard_{i}",
         "expr": expr.replace("$__rate_interval", "5m").replace("$Hostname", ".*")}
        for i, expr in enumerate(_exprs())]}]}
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr

"""Console-side settings (tokens), fleet state (sort, filter, history) and formatting, without a UI."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gpufleet.console.config import ConsoleConfigError, Secret, TokenError, load_token, node_targets
from gpufleet.console.poller import describe_error
from gpufleet.console.state import HISTORY_MIN, FleetState
from gpufleet.console.widgets.format import ago, level
from gpufleet.console.widgets.memory_bar import bar_text
from gpufleet.server.client import ConnectionFailed, Forbidden, RequestTimeout
from gpufleet.server.config import NodeSettings, Settings
from gpufleet.server.gpu.simulated import simulated_backends
from gpufleet.server.schemas import GpuStatusResponse

T0 = datetime(2026, 3, 11, 15, 0, tzinfo=UTC)


def test_token_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("s3cret-token\n")
    path.chmod(0o644)
    node = NodeSettings(name="gpu-7", url="http://127.0.0.1:1", token_file=path)
    with pytest.raises(TokenError) as caught:
        load_token(node)
    message = str(caught.value)
    assert "gpu-7" in message and "chmod 600" in message and "0644" in message
    assert "s3cret" not in message
    path.chmod(0o600)
    token = load_token(node)
    assert token is not None and token.value == "s3cret-token"


def test_token_from_env_and_never_printed(caplog: pytest.LogCaptureFixture) -> None:
    node = NodeSettings(name="n1", url="http://127.0.0.1:1/", token_env="N1_TOKEN")
    with pytest.raises(TokenError, match="N1_TOKEN is not set"):
        load_token(node, {})
    settings = Settings(nodes=[node])
    (target,) = node_targets(settings, {"N1_TOKEN": "tok-abc"})
    assert target.url == "http://127.0.0.1:1" and target.api_key == "tok-abc"
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("gpufleet.console").info("target %s %r", target, target)
    assert "tok-abc" not in repr(target) and "tok-abc" not in str(target)
    assert "tok-abc" not in caplog.text
    assert str(Secret("x")) == "***"


def test_duplicate_node_names_are_refused() -> None:
    node = NodeSettings(name="n1", url="http://127.0.0.1:1")
    with pytest.raises(ConsoleConfigError, match="listed twice"):
        node_targets(Settings(nodes=[node, node]))


def test_errors_are_short_and_secret_free() -> None:
    assert describe_error(ConnectionFailed(None, "Cannot reach http://127.0.0.1:9")) == "connection failed"
    assert describe_error(RequestTimeout(None, "slow"), timeout_s=3) == "no answer within 3 s"
    assert describe_error(Forbidden(403, "operator scope required")) == "HTTP 403: operator scope required"


def _status(backend: object) -> GpuStatusResponse:
    snap = backend.snapshot()  # type: ignore[attr-defined]
    return GpuStatusResponse(timestamp=snap.taken_at, gpus=list(snap.gpus),
                             processes=list(snap.processes), total_gpus=len(snap.gpus),
                             node=snap.node, models=backend.loaded_models())  # type: ignore[attr-defined]


@pytest.fixture
def fleet() -> FleetState:
    backends = simulated_backends(3, clock=lambda: T0)
    state = FleetState([b.node_name for b in backends], refresh_s=2)
    for backend in backends:
        state.apply_status(backend.node_name, _status(backend), 3.0, T0)
    return state


def test_rows_group_gpus_under_their_node(fleet: FleetState) -> None:
    rows = fleet.rows()
    assert [r.node.name for r in rows if r.kind == "node"] == ["dgx-a100-01", "dgx-h100-01", "ws-gpu-01"]
    assert rows[0].kind == "node" and rows[1].key == ("dgx-a100-01", 0)
    assert fleet.simulated and fleet.counts() == (3, 3, 18)


def test_sort_by_temperature_puts_the_hottest_node_and_gpu_first(fleet: FleetState) -> None:
    rows = fleet.rows(sort="temp", reverse=True)
    hottest = max((r for r in rows if r.gpu), key=lambda r: r.gpu.temperature_c or 0)  # type: ignore[union-attr]
    assert rows[1] is not None and rows[1].gpu == hottest.gpu
    ascending = [r.gpu.temperature_c for r in fleet.rows(sort="temp") if r.gpu and r.node.name == "ws-gpu-01"]
    assert ascending == sorted(ascending)  # type: ignore[type-var]


def test_filter_matches_node_gpu_team_model_and_process(fleet: FleetState) -> None:
    def gpus(query: str) -> set[tuple[str, int | None]]:
        return {r.key for r in fleet.rows(query=query) if r.kind == "gpu"}

    assert len(gpus("ws-gpu")) == 2  # node name: all its GPUs
    assert gpus("l40s") == {("ws-gpu-01", 1)}  # GPU name
    assert {k[0] for k in gpus("inference")} == {"dgx-h100-01", "ws-gpu-01"}  # team
    assert gpus("sdxl") == {("dgx-a100-01", 6)}  # model
    assert gpus("torch.distributed") >= {("dgx-a100-01", 0)}  # process command
    assert fleet.rows(query="no-such-thing") == []



def test_process_rows_last_as_long_as_their_nodes_answer(fleet: FleetState) -> None:
    # The process table reuses a drawn line while its row object is the same: a poll of one
    # node must leave every other node's rows (and lines) alone, in any sort.
    before = {r.key: r for r in fleet.process_rows()}
    assert {r.node.name for r in before.values()} >= {"dgx-a100-01", "dgx-h100-01"}
    node = fleet.nodes["dgx-h100-01"]
    assert node.status is not None
    fleet.apply_status("dgx-h100-01", node.status.model_copy(), 3.0, T0 + timedelta(seconds=2))
    after = fleet.process_rows(sort="pid", reverse=False)
    assert after and all((row is before[row.key]) == (row.node.name != "dgx-h100-01") for row in after)
    assert [r.key for r in fleet.process_rows(query="dgx-a100")] == \
        [r.key for r in fleet.process_rows() if r.node.name == "dgx-a100-01"]

def test_failure_keeps_last_readings_and_history_is_bounded(fleet: FleetState) -> None:
    node = fleet.nodes["ws-gpu-01"]
    fleet.apply_failure("ws-gpu-01", "connection failed", T0 + timedelta(minutes=5))
    assert node.reachable is False and node.last_ok_at == T0 and node.status is not None
    assert fleet.history_len == 451
    small = FleetState(["a"], refresh_s=600)
    backend = simulated_backends(1, clock=lambda: T0)[0]
    for _ in range(small.history_len + 5):
        small.apply_status("a", _status(backend), 1.0, T0)
    assert len(small.nodes["a"].histories[0]) == small.history_len == HISTORY_MIN


def test_formatting_helpers() -> None:
    assert ago(T0, T0 + timedelta(seconds=42)) == "42s ago"
    assert ago(T0, T0 + timedelta(minutes=3, seconds=5)) == "3m ago"
    assert ago(None, T0) == "never"
    assert level(50, (70, 90)) == "ok" and level(75, (70, 90)) == "warn" and level(95, (70, 90)) == "crit"
    used, free = bar_text(0.5, 10)
    assert len(used) + len(free) == 10 and used == "█████"


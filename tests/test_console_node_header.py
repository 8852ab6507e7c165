"""The fleet table's node header row fitted to narrow widths: parts shrink or go, never get cut."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from rich.cells import cell_len

from gpufleet.console.state import FleetState, NodeState
from gpufleet.console.widgets.node_header import node_header_parts
from gpufleet.server.gpu.simulated import simulated_backends
from gpufleet.server.schemas import GpuStatusResponse

T0 = datetime(2026, 3, 11, 15, 0, tzinfo=UTC)
A100 = "dgx-a100-01"


def _status(backend: object) -> GpuStatusResponse:
    snap = backend.snapshot()  # type: ignore[attr-defined]
    return GpuStatusResponse(timestamp=snap.taken_at, gpus=list(snap.gpus),
                             processes=list(snap.processes), total_gpus=len(snap.gpus),
                             node=snap.node, models=backend.loaded_models())  # type: ignore[attr-defined]


@pytest.fixture
def node() -> NodeState:
    backend = next(b for b in simulated_backends(3, clock=lambda: T0) if b.node_name == A100)
    state = FleetState([A100], refresh_s=2)
    state.apply_status(A100, _status(backend), 14.0, T0)
    return state.nodes[A100]


def text(node: NodeState, width: int) -> str:
    return "".join(t for t, _ in node_header_parts(node, width, now=T0))


def test_wide_row_says_everything(node: NodeState) -> None:
    row = text(node, 200)
    assert row.startswith(f"▾ {A100}  ● up  14 ms   SIM   8 x A100-SXM4-80GB  mem ")
    assert row.endswith(" W") and "/640.0 GB" in row


def test_at_80_columns_the_gpu_model_goes_first_and_power_stays_whole(node: NodeState) -> None:
    full = text(node, 200)
    row = text(node, 79)  # 80 columns less the scrollbar
    assert cell_len(row) <= 79
    assert "8 GPUs" in row and "A100-SXM4" not in row
    power = full.rsplit("  ", 1)[1]
    assert row.endswith("  " + power)  # e.g. "1383 W", not "138"


def test_narrower_rows_drop_parts_in_order_and_fit(node: NodeState) -> None:
    seen: list[str] = []
    for width in range(120, 20, -1):
        row = text(node, width)
        if cell_len(row) > width:  # only the name, the state and SIM are left
            assert row == f"▾ {A100}  ● up   SIM "
            break
        if row not in seen:
            seen.append(row)
    # Model, then precision of memory, GPU count, round trip, power, memory.
    assert any("mem " not in r and "GB" in r and "8 GPUs" in r for r in seen)
    assert any("GPUs" not in r and "ms" in r and "GB" in r for r in seen)
    assert any(" ms" not in r and r.endswith(" W") for r in seen)
    assert seen[-1] == f"▾ {A100}  ● up   SIM "
    # Every row ends on a whole part: a figure with its unit, or the SIM label.
    assert all(re.search(r"(\d W| GB| ms| SIM )$", row) for row in seen), seen


def test_unreachable_row_drops_the_error_before_last_seen(node: NodeState) -> None:
    node.reachable, node.last_error, node.last_ok_at = False, "no answer within 3 s", T0 - timedelta(minutes=5)
    wide = text(node, 200)
    assert "✖ unreachable  last seen 5m ago  no answer within 3 s   SIM " in wide
    narrow = text(node, 55)
    assert narrow == f"▾ {A100}  ✖ unreachable  last seen 5m ago   SIM "
    assert text(node, 30) == f"▾ {A100}  ✖ unreachable   SIM "


def test_waiting_node() -> None:
    assert text(NodeState("n1"), 80) == "▾ n1  … waiting for the first answer"

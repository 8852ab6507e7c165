"""Text the console's screens build from server answers: purge results and the detail's facts."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from gpufleet.console.screens.purge import describe_result
from gpufleet.console.widgets.gpu_facts import clocks_line
from gpufleet.server.gpu.simulated import simulated_backends
from gpufleet.server.schemas import MemorySummary, PurgeResult

T0 = datetime(2026, 3, 11, 15, 0, tzinfo=UTC)
SKIP = "skipped qwen3:32b (ollama): serving a request; use force to unload"
FAIL = "unload llama3:8b (ollama) failed: HTTP 500 llama runner crashed"


def result(*, errors: list[str], skipped: list[str]) -> PurgeResult:
    memory = MemorySummary(used_gb=40.0, total_gb=80.0, percent_used=50.0)
    return PurgeResult(status="partial", timestamp=T0, actions=["unloaded mistral:7b (ollama)"],
                       memory_before=memory, memory_after=memory, memory_freed_gb=0.0,
                       models_unloaded=["mistral:7b"], errors=errors,
                       recommendation="1 model in use skipped (qwen3:32b)", skipped=skipped)


def section(lines: list[str], title: str) -> list[str]:
    """The bullet lines under ``title`` (up to the next unindented line)."""
    start = next(i for i, line in enumerate(lines) if title in line and not line.startswith(" "))
    body = []
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        body.append(line)
    return body


def test_a_skip_the_server_also_lists_as_an_error_is_shown_once_under_skipped() -> None:
    lines = describe_result(result(errors=[SKIP, FAIL], skipped=[SKIP]))
    text = "\n".join(lines)
    assert text.count(SKIP) == 1
    assert any(SKIP in line for line in section(lines, "Skipped:"))
    errors = section(lines, "Errors:")
    assert len(errors) == 1 and FAIL in errors[0]


def test_only_skips_means_no_errors_section() -> None:
    lines = describe_result(result(errors=[SKIP], skipped=[SKIP]))
    assert not any("Errors:" in line for line in lines)
    assert len(section(lines, "Skipped:")) == 1


def test_errors_without_skips_are_all_shown() -> None:
    lines = describe_result(result(errors=[FAIL, SKIP], skipped=[]))
    assert not any("Skipped:" in line for line in lines)
    assert len(section(lines, "Errors:")) == 2


def test_detail_facts_give_clocks_with_units_in_one_line() -> None:
    gpu = simulated_backends(1, clock=lambda: T0)[0].snapshot().gpus[0]
    facts = clocks_line(gpu)
    assert "\n" not in facts
    assert re.search(r"SM \d+ MHz · mem \d+ MHz · P-state P\d+ · fan (\d+%|—) · MIG off · mem util \d+%", facts), facts


def test_the_purge_plan_says_what_else_a_sharded_model_frees() -> None:
    from gpufleet.console.screens.purge import describe_plan
    from gpufleet.console.state import NodeState
    from gpufleet.server.gpu.simulated import SimulatedBackend
    from gpufleet.server.schemas import GpuStatusResponse

    backend = SimulatedBackend("dgx-h100-01")  # qwen-3.5-27b is sharded over GPUs 6 and 7
    snap = backend.snapshot()
    status = GpuStatusResponse(timestamp=T0, gpus=list(snap.gpus), processes=list(snap.processes),
                               total_gpus=len(snap.gpus), node=snap.node, models=backend.loaded_models())
    node = NodeState(name="dgx-h100-01", status=status, reachable=True)
    text = "\n".join(describe_plan(node, [7], force=True))
    assert "qwen-3.5-27b (simulated, GPUs 6,7," in text
    assert "also frees GPU 6" in text
    assert "also frees" not in "\n".join(describe_plan(node, None, force=True))
    assert "also frees" not in "\n".join(describe_plan(node, [6, 7], force=True))

"""Text the console's screens build from server answers: purge results and sparkline titles."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from gpufleet.console.screens.detail import gpu_facts
from gpufleet.console.screens.purge import describe_result
from gpufleet.console.widgets.sparklines import CAPTION_WIDTH, caption
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


def test_sparkline_captions_carry_units_on_both_figures_and_fit() -> None:
    assert caption([250.4, 288.0, 256.2], " W") == "now 256 W max 288 W"
    assert caption([40, 78], "°C") == "now 78°C max 78°C"
    assert caption([], " W") == "now — max —"
    widest = caption([1000.0], " W")
    assert len(widest) < CAPTION_WIDTH  # a 1 kW GPU's caption is not cut


def test_detail_facts_give_power_with_units() -> None:
    gpu = simulated_backends(1, clock=lambda: T0)[0].snapshot().gpus[0]
    facts = gpu_facts(gpu)
    power = next(line for line in facts.splitlines() if "Power" in line)
    assert re.search(r"\d W of \d+ W$", power), power


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

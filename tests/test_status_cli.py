"""``gpufleet status`` end to end, in a subprocess, as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gpufleet.server.schemas import GpuStatusResponse

ROOT = Path(__file__).resolve().parent.parent


def _gpufleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpufleet.server.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_status_simulated_table():
    result = _gpufleet("status", "--simulate")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "ws-gpu-01" in out and "SIMULATED" in out and "CUDA 12.4" in out
    assert "NVIDIA H100 80GB HBM3" in out and "NVIDIA L40S" in out
    assert "ollama" in out and "not visible from this host" in out
    assert "TOTAL MiB" in out and " 81559 " in out  # memory in MiB


def test_status_json_is_the_status_body():
    result = _gpufleet("status", "--simulate", "--json")
    assert result.returncode == 0, result.stderr
    body = GpuStatusResponse.model_validate_json(result.stdout)
    assert body.status == "success" and body.total_gpus == len(body.gpus) == 2
    assert body.node is not None and body.node.simulated and body.node.backend == "simulated"
    assert body.models and {m.name for m in body.models} == {"qwen-3.5-27b", "bge-embed"}
    assert result.stdout.count("\n") == 1  # exactly one JSON document
    assert '"timestamp":"' in result.stdout and 'Z"' in result.stdout


def test_status_without_simulate_falls_back_and_says_so():
    # No NVIDIA driver on CI machines: the simulated node, clearly labelled.
    result = _gpufleet("status", "--json")
    assert result.returncode == 0, result.stderr
    body = GpuStatusResponse.model_validate_json(result.stdout)
    assert body.node is not None
    assert body.node.simulated == (body.node.backend == "simulated")


def test_status_reports_no_backend_with_exit_1(monkeypatch, capsys):
    import argparse

    from gpufleet.server.commands import status
    from gpufleet.server.gpu.base import BackendUnavailable

    def unavailable(*, simulate=False):
        raise BackendUnavailable("no driver and a broken fleet file")

    monkeypatch.setattr("gpufleet.server.gpu.select.open_backend", unavailable)
    rc = status.run(argparse.Namespace(json=False, simulate=False, verbose=False))
    err = capsys.readouterr().err
    assert rc == 1 and "no GPU data: no driver and a broken fleet file" in err


def test_table_marks_lost_gpus_and_unsupported_fields():
    from datetime import UTC, datetime

    from gpufleet.server.commands.status import render_table
    from gpufleet.server.schemas import GpuInfo, GpuMemory, GpuUtilization, NodeInfo

    status = GpuStatusResponse(
        timestamp=datetime(2026, 3, 3, 14, tzinfo=UTC), total_gpus=2, processes=[],
        node=NodeInfo(hostname="node-a", driver_version="550.54.15", cuda_version="12.4",
                      simulated=False, backend="nvml"),
        gpus=[
            GpuInfo(index=0, name="NVIDIA A100-SXM4-80GB", memory=GpuMemory.from_mb(81920, 1024),
                    utilization=GpuUtilization(gpu_percent=None, memory_percent=None)),
            GpuInfo(index=1, name="NVIDIA A100-SXM4-80GB", memory=GpuMemory.from_mb(0, 0),
                    utilization=GpuUtilization(), lost=True),
        ],
    )
    table = render_table(status)
    assert "SIMULATED" not in table and "NVML" in table and "2026-03-03T14:00:00Z" in table
    assert "n/a" in table and "GPU 1 is lost" in table and "No GPU processes." in table


def _assert_aligned(header: str, rows: list[str], columns: tuple[tuple[str, bool], ...],
                    expected: list[list[str]]) -> None:
    """Each value sits under its header: numbers end where the header ends, text starts with it."""
    at = 0
    for col, (name, right) in enumerate(columns):
        start = header.index(name, at)
        end = start + len(name)
        at = end
        for row, values in zip(rows, expected, strict=True):
            value = values[col]
            if not value:
                continue
            if right:
                assert row[end - len(value):end] == value, (name, row)
                assert end == len(row) or row[end] == " ", (name, row)
            else:
                assert row[start:start + len(value)] == value, (name, row)
                assert start == 0 or row[start - 1] == " ", (name, row)


def test_every_header_lines_up_with_its_column_values():
    from datetime import UTC, datetime

    from gpufleet.server.commands.status import GPU_COLUMNS, PROCESS_COLUMNS, render_table
    from gpufleet.server.schemas import GpuInfo, GpuMemory, GpuProcess, GpuUtilization, MigDevice

    status = GpuStatusResponse(
        timestamp=datetime(2026, 3, 3, 14, tzinfo=UTC), total_gpus=3,
        gpus=[
            GpuInfo(index=0, name="NVIDIA H100 80GB HBM3", memory=GpuMemory.from_mb(81559, 56036),
                    utilization=GpuUtilization(gpu_percent=100, memory_percent=40),
                    temperature_c=71, power_draw_w=699.6, power_limit_w=700.0),
            GpuInfo(index=1, name="Tesla T4", memory=GpuMemory.from_mb(15360, 5),
                    utilization=GpuUtilization(gpu_percent=0), mig_devices=[
                        MigDevice(index=0, name="1g.10gb", memory_total_mb=9856, memory_used_mb=12)]),
            GpuInfo(index=12, name="NVIDIA A100-SXM4-80GB", memory=GpuMemory.from_mb(0, 0),
                    utilization=GpuUtilization(), lost=True),
        ],
        processes=[GpuProcess(pid=7, name="python", memory_mb=56036, gpu_index=0, user="ml",
                              cpu_percent=182.44, host_rss_mb=20480, elapsed_s=93_784.2),
                   GpuProcess(pid=4194304, name="vllm", memory_mb=None, gpu_index=None,
                              user="inference-service", command="vllm serve qwen")],
    )
    lines = render_table(status).splitlines()
    gpu_header = lines.index(next(line for line in lines if line.startswith("GPU  NAME")))
    gpu_rows = lines[gpu_header + 1:gpu_header + 5]
    _assert_aligned(lines[gpu_header], gpu_rows, GPU_COLUMNS, [
        ["0", "NVIDIA H100 80GB HBM3", "56036", "81559", "68.7%", "100%", "71C", "700 / 700", "1"],
        ["1", "Tesla T4", "5", "15360", "0.0%", "0%", "n/a", "n/a / n/a", "0"],
        ["└0", "MIG 1g.10gb", "12", "9856", "", "", "", "", ""],
        ["12", "NVIDIA A100-SXM4-80GB", "lost", "", "", "", "", "", "0"],
    ])
    proc_header = lines.index(next(line for line in lines if line.startswith("GPU      PID")))
    _assert_aligned(lines[proc_header], lines[proc_header + 1:], PROCESS_COLUMNS, [
        ["0", "7", "ml", "56036", "182.4", "20480", "1-02:03:04", "python"],
        ["?", "4194304", "inference-service", "n/a", "", "", "", "vllm  vllm serve qwen"],
    ])
    # No header without values under it, no values without a header.
    assert all(len(row) <= len(lines[gpu_header]) for row in gpu_rows)


def test_table_names_gpu_health_problems_and_process_depth():
    result = _gpufleet("status", "--simulate")
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if " PID " in line)
    assert "CPU%" in header and "HOST MiB" in header and "TIME" in header

    from datetime import UTC, datetime

    from gpufleet.server.commands.status import render_table
    from gpufleet.server.gpu.simulated import SimulatedBackend

    when = datetime(2026, 3, 3, 14, tzinfo=UTC)
    snap = SimulatedBackend("dgx-a100-01", clock=lambda: when).snapshot()
    table = render_table(GpuStatusResponse(timestamp=when, gpus=list(snap.gpus),
                                           processes=list(snap.processes), total_gpus=8))
    assert ("GPU 5: 1 uncorrected ECC error(s) since driver load; row remapping pending: reset "
            "the GPU; 2 XID error(s), last XID 63") in table.splitlines()
    assert sum(line.startswith("GPU ") and ": " in line for line in table.splitlines()) == 1


def test_elapsed_is_written_as_ps_does():
    from gpufleet.server.commands.status import elapsed

    assert [elapsed(s) for s in (None, 0, 59.9, 61, 3_600, 86_399, 90_061)] == [
        "", "00:00", "00:59", "01:01", "01:00:00", "23:59:59", "1-01:01:01"]


def test_a_command_line_with_escape_sequences_cannot_drive_the_readers_terminal():
    """Any user names their own processes: their bytes reach root's terminal only as escapes."""
    import psutil

    from gpufleet.server.commands.status import render_table
    from gpufleet.server.gpu.processes import ProcessInspector
    from gpufleet.server.schemas import GpuProcess

    hostile = "\x1b]0;owned\x07\x1b[2J\u202e\nFORGED ROW"
    # its argv[0]: the command line starts with it, as a user's renamed process would
    child = subprocess.Popen([hostile, "-c", "import sys; sys.stdin.read()"],
                             executable=sys.executable, stdin=subprocess.PIPE)
    try:
        seen = ProcessInspector().describe([child.pid])[child.pid]
        assert seen.visible and hostile in (seen.command or "")  # /proc gives it back as sent
        process = GpuProcess(pid=child.pid, name=seen.name, memory_mb=1024, gpu_index=0,
                             user="x\x1b[8m", command=seen.command, visible=True)
        table = render_table(GpuStatusResponse(
            timestamp=psutil.Process(child.pid).create_time(), gpus=[], processes=[process],
            total_gpus=0))
    finally:
        child.kill()
        child.wait()
    assert not any(ch in table for ch in "\x1b\x07\u202e")
    assert r"\x1b]0;owned\x07\x1b[2J" in table and r"\u202e" in table and r"x\x1b[8m" in table
    row = next(line for line in table.splitlines() if str(child.pid) in line)
    assert r"\x0aFORGED ROW" in row  # its line break is no new row
    assert not any(line.startswith("FORGED") for line in table.splitlines())

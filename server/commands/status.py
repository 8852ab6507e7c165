"""``gpufleet status``: this node's GPUs and GPU processes, once, like nvidia-smi or gpustat."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from gpufleet.server.commands.terminal import printable

if TYPE_CHECKING:
    from gpufleet.server.schemas import GpuInfo, GpuProcess, GpuStatusResponse

HELP = "Show this node's GPUs and GPU processes once (real via NVML, else the simulated fleet)."
NAME_WIDTH = 32  # longer names are clipped with …; columns size to their content
COMMAND_WIDTH = 60
EXIT_CODES = """\
  0  printed
  1  no GPU data: neither NVML nor the simulated fleet could be read
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print the GET /v1/gpu/status response body as JSON")
    parser.add_argument("--simulate", action="store_true",
                        help="show the simulated fleet's local node even when NVML works")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log backend choice and unsupported fields to stderr")


def run(args: argparse.Namespace) -> int:
    import logging

    from gpufleet.server.gpu.base import BackendUnavailable, ModelHost
    from gpufleet.server.gpu.select import open_backend
    from gpufleet.server.schemas import GpuStatusResponse

    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        backend = open_backend(simulate=args.simulate)
        try:
            snap = backend.snapshot()
            models = backend.loaded_models() if isinstance(backend, ModelHost) else None
        finally:
            backend.close()
    except BackendUnavailable as exc:
        print(f"gpufleet status: no GPU data: {exc}", file=sys.stderr)
        return 1
    response = GpuStatusResponse(timestamp=snap.taken_at, gpus=list(snap.gpus),
                                 processes=list(snap.processes), total_gpus=len(snap.gpus),
                                 node=snap.node, models=models)
    if args.json:
        print(response.model_dump_json(by_alias=True))
    else:
        print(render_table(response))
    return 0


def render_table(status: GpuStatusResponse) -> str:
    """The human view: a node line, one row per GPU (and MIG instance), then the processes."""
    from gpufleet.server.schemas import format_utc

    lines: list[str] = []
    node = status.node
    if node is not None:
        label = "SIMULATED (demo fleet, not this machine's GPUs)" if node.simulated else "NVML"
        lines.append(printable(f"{node.hostname}  {label}  driver {node.driver_version or 'n/a'}  "
                               f"CUDA {node.cuda_version or 'n/a'}  {format_utc(status.timestamp)}"))
    per_gpu: dict[int, int] = {}
    for proc in status.processes:
        if proc.gpu_index is not None:
            per_gpu[proc.gpu_index] = per_gpu.get(proc.gpu_index, 0) + 1
    rows: list[list[str]] = []
    lost: list[int] = []
    for gpu in status.gpus:
        rows.append(_gpu_cells(gpu, per_gpu.get(gpu.index, 0)))
        if gpu.lost:
            lost.append(gpu.index)
        for mig in gpu.mig_devices:
            rows.append([f"└{mig.index}", _clip(f"MIG {mig.name or ''}".rstrip(), NAME_WIDTH),
                         _opt(mig.memory_used_mb), _opt(mig.memory_total_mb), "", "", "", "", ""])
    lines += format_table(GPU_COLUMNS, rows)
    lines += [f"GPU {index} is lost: no readings until it is reset." for index in lost]
    for gpu in status.gpus:  # what needs a look: heat, ECC, repairs waiting for a reset, XIDs
        problems = [p for p in gpu.health_problems() if p != "GPU is lost"]
        if problems:
            lines.append(printable(f"GPU {gpu.index}: " + "; ".join(problems)))
    lines.append("")
    if not status.processes:
        lines.append("No GPU processes.")
        return "\n".join(lines)
    lines += format_table(PROCESS_COLUMNS, [_process_cells(p) for p in status.processes])
    return "\n".join(lines)


# (header, right-aligned): numbers line up on their last digit, text on its first letter.
GPU_COLUMNS: tuple[tuple[str, bool], ...] = (
    ("GPU", True), ("NAME", False), ("USED MiB", True), ("TOTAL MiB", True), ("MEM%", True),
    ("UTIL", True), ("TEMP", True), ("POWER W", True), ("PROCS", True),
)
PROCESS_COLUMNS: tuple[tuple[str, bool], ...] = (
    ("GPU", True), ("PID", True), ("USER", False), ("MEMORY MiB", True), ("CPU%", True),
    ("HOST MiB", True), ("TIME", True), ("PROCESS", False),
)
COLUMN_GAP = "  "


def format_table(columns: tuple[tuple[str, bool], ...], rows: list[list[str]]) -> list[str]:
    """Header and rows with every column as wide as its widest cell, header included."""
    widths = [max(len(header), *(len(row[i]) for row in rows)) if rows else len(header)
              for i, (header, _) in enumerate(columns)]

    def line(cells: list[str]) -> str:
        parts = [cell.rjust(width) if right else cell.ljust(width)
                 for cell, width, (_, right) in zip(cells, widths, columns, strict=True)]
        return COLUMN_GAP.join(parts).rstrip()

    return [line([header for header, _ in columns]), *(line(row) for row in rows)]


def _gpu_cells(gpu: GpuInfo, processes: int) -> list[str]:
    name = _clip(printable(gpu.name), NAME_WIDTH)
    if gpu.lost:
        return [str(gpu.index), name, "lost", "", "", "", "", "", str(processes)]
    mem = gpu.memory
    draw = "n/a" if gpu.power_draw_w is None else f"{gpu.power_draw_w:.0f}"
    limit = "n/a" if gpu.power_limit_w is None else f"{gpu.power_limit_w:.0f}"
    return [str(gpu.index), name, str(mem.used_mb), str(mem.total_mb), f"{mem.percent_used:.1f}%",
            _opt(gpu.utilization.gpu_percent, "%"), _opt(gpu.temperature_c, "C"),
            f"{draw} / {limit}", str(processes)]


def _process_cells(proc: GpuProcess) -> list[str]:
    gpu = "?" if proc.gpu_index is None else str(proc.gpu_index)
    memory = "n/a" if proc.memory_mb is None else str(proc.memory_mb)
    # a process names itself: any user of the machine chooses these words
    name = printable(proc.name)
    if proc.visible:
        what = name
        if proc.command:
            what = f"{name}  {_clip(printable(proc.command), COMMAND_WIDTH)}"
    else:
        what = f"{name} (PID not visible from this host, e.g. another container)"
    cpu = "" if proc.cpu_percent is None else f"{proc.cpu_percent:.1f}"
    host = "" if proc.host_rss_mb is None else str(proc.host_rss_mb)
    return [gpu, str(proc.pid), printable(proc.user or "?"), memory, cpu, host,
            elapsed(proc.elapsed_s), what]


def elapsed(seconds: float | None) -> str:
    """Running time as ps writes it: [[days-]hours:]minutes:seconds."""
    if seconds is None:
        return ""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"
    if hours:
        return f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{minutes:02d}:{secs:02d}"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _opt(value: float | None, unit: str = "") -> str:
    return "n/a" if value is None else f"{value}{unit}"

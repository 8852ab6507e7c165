"""``gpufleet status``: this node's GPUs and GPU processes, once, like nvidia-smi or gpustat."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.schemas import GpuInfo, GpuProcess, GpuStatusResponse

HELP = "Show this node's GPUs and GPU processes once (real via NVML, else the simulated fleet)."
NAME_WIDTH = 24
COMMAND_WIDTH = 60


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print the GET /v1/gpu/status response body as JSON")
    parser.add_argument("--simulate", action="store_true",
                        help="show the simulated fleet's local node even when NVML works")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log backend choice and unsupported fields to stderr")


def run(args: argparse.Namespace) -> int:
    import logging

    from server.gpu.base import BackendUnavailable, ModelHost
    from server.gpu.select import open_backend
    from server.schemas import GpuStatusResponse

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
    """The human view: a node line, one row per GPU, then the processes."""
    from server.schemas import format_utc

    lines: list[str] = []
    node = status.node
    if node is not None:
        label = "SIMULATED (demo fleet, not this machine's GPUs)" if node.simulated else "NVML"
        lines.append(f"{node.hostname}  {label}  driver {node.driver_version or 'n/a'}  "
                     f"CUDA {node.cuda_version or 'n/a'}  {format_utc(status.timestamp)}")
    lines.append(f"{'GPU':>3}  {'NAME':<{NAME_WIDTH}}  {'MEMORY (MiB)':>22}  {'UTIL':>4}  "
                 f"{'TEMP':>4}  {'POWER (W)':>11}  {'PROCS':>5}")
    per_gpu: dict[int, int] = {}
    for proc in status.processes:
        if proc.gpu_index is not None:
            per_gpu[proc.gpu_index] = per_gpu.get(proc.gpu_index, 0) + 1
    for gpu in status.gpus:
        lines.append(_gpu_row(gpu, per_gpu.get(gpu.index, 0)))
        for mig in gpu.mig_devices:
            lines.append(f"{'':>3}  └ MIG {mig.index} {mig.name or ''}  "
                         f"{_opt(mig.memory_used_mb)} / {_opt(mig.memory_total_mb)} MiB")
    lines.append("")
    if not status.processes:
        lines.append("No GPU processes.")
        return "\n".join(lines)
    lines.append(f"{'GPU':>3}  {'PID':>7}  {'USER':<14}  {'MEMORY':>10}  PROCESS")
    for proc in status.processes:
        lines.append(_process_row(proc))
    return "\n".join(lines)


def _gpu_row(gpu: GpuInfo, processes: int) -> str:
    name = gpu.name if len(gpu.name) <= NAME_WIDTH else gpu.name[: NAME_WIDTH - 1] + "…"
    if gpu.lost:
        return f"{gpu.index:>3}  {name:<{NAME_WIDTH}}  GPU is lost: no readings until it is reset"
    mem = gpu.memory
    memory = f"{mem.used_mb:>6} / {mem.total_mb:<6} {mem.percent_used:>5.1f}%"
    util = _opt(gpu.utilization.gpu_percent, "%")
    temp = _opt(gpu.temperature_c, "C")
    draw = "n/a" if gpu.power_draw_w is None else f"{gpu.power_draw_w:.0f}"
    limit = "n/a" if gpu.power_limit_w is None else f"{gpu.power_limit_w:.0f}"
    return (f"{gpu.index:>3}  {name:<{NAME_WIDTH}}  {memory:>22}  {util:>4}  {temp:>4}  "
            f"{draw + ' / ' + limit:>11}  {processes:>5}")


def _process_row(proc: GpuProcess) -> str:
    gpu = "?" if proc.gpu_index is None else str(proc.gpu_index)
    memory = "n/a" if proc.memory_mb is None else f"{proc.memory_mb} MiB"
    if proc.visible:
        what = proc.name
        if proc.command:
            command = proc.command
            if len(command) > COMMAND_WIDTH:
                command = command[: COMMAND_WIDTH - 1] + "…"
            what = f"{proc.name}  {command}"
    else:
        what = f"{proc.name} (PID not visible from this host, e.g. another container)"
    return f"{gpu:>3}  {proc.pid:>7}  {(proc.user or '?'):<14}  {memory:>10}  {what}"


def _opt(value: float | None, unit: str = "") -> str:
    return "n/a" if value is None else f"{value}{unit}"

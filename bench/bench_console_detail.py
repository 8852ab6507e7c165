"""Console CPU with a GPU detail open, against the fleet screen, on the real console over `gpufleet simulate`.

Usage:  .venv/bin/python bench/bench_console_detail.py --nodes 64 --gpus-per-node 8 --refresh 1

The same setup as bench_console.py (its functions are reused): the simulator in
its own process, the console on a 120x40 pty. After every node is drawn, CPU
(% of one core) is measured over a window on the fleet screen, then Enter opens
the first node's GPU 0 and the same window is measured on the detail screen,
which redraws its graphs and process table while all 64 nodes keep answering.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil

_spec = importlib.util.spec_from_file_location("bench_console", Path(__file__).with_name("bench_console.py"))
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def cpu_over(console: psutil.Process, seconds: float) -> tuple[float, float]:
    """(% of one core, max RSS MB) of ``console`` over ``seconds``."""
    cpu0, wall0 = console.cpu_times(), time.perf_counter()
    rss = []
    while time.perf_counter() - wall0 < seconds:
        time.sleep(0.5)
        rss.append(console.memory_info().rss / 2**20)
    cpu1, wall1 = console.cpu_times(), time.perf_counter()
    busy = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return 100 * busy / (wall1 - wall0), max(rss)


def measure(args: argparse.Namespace, nodes_file: Path, env: dict[str, str]) -> dict[str, str]:
    term, _ = bench.launch(args, nodes_file, env)
    figures: dict[str, str] = {}
    try:
        console = psutil.Process(term.proc.pid)
        time.sleep(2.0)  # settle: every poller is on its steady schedule
        cpu, rss = cpu_over(console, args.seconds)
        figures["fleet screen: CPU, % of one core"] = f"{cpu:.1f} %"
        figures["fleet screen: RSS max"] = f"{rss:.0f} MB"
        opened = term.watch("History")  # the detail's graph heading (the old detail has none)
        term.send(b"\x1b[B")  # down: from the first node's row to its GPU 0
        time.sleep(0.3)
        term.send(b"\r")
        term.wait(opened, 10.0)
        time.sleep(2.0)
        cpu, rss = cpu_over(console, args.seconds)
        figures["GPU detail: CPU, % of one core"] = f"{cpu:.1f} %"
        figures["GPU detail: RSS max"] = f"{rss:.0f} MB"
        figures["exit code after ctrl+c"] = str(bench.quit_console(term))
    finally:
        if term.proc.poll() is None:
            term.proc.terminate()
            term.proc.wait(timeout=20)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--refresh", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=20.0, help="CPU window on each screen")
    parser.add_argument("--gpufleet", type=Path, default=None, metavar="PATH",
                        help="the gpufleet executable to run (default: the one beside this Python)")
    args = parser.parse_args()
    args.profile = None
    if args.gpufleet is not None:
        bench.GPUFLEET[:] = [str(args.gpufleet)]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        env = {**os.environ, "TERM": "xterm-256color", "COLORTERM": "truecolor",
               "XDG_DATA_HOME": str(workdir / "data"), "XDG_CONFIG_HOME": str(workdir / "config"),
               "XDG_STATE_HOME": str(workdir / "state"), "XDG_CACHE_HOME": str(workdir / "cache")}
        env.pop("TEXTUAL", None)
        simulate, nodes_file = bench.start_simulate(args.nodes, args.gpus_per_node, workdir, env)
        try:
            figures = measure(args, nodes_file, env)
        finally:
            simulate.terminate()
            simulate.wait(timeout=30)
    print(f"nodes={args.nodes} gpus/node={args.gpus_per_node} refresh={args.refresh}s "
          f"window={args.seconds:.0f}s terminal=120x40 cores={psutil.cpu_count()} "
          f"load={os.getloadavg()[0]:.1f}")
    for name, value in figures.items():
        print(f"  {name:<34} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Console speed against `gpufleet simulate`: CPU, RSS, first screen and key-press latency.

Usage:  .venv/bin/python bench/bench_console.py --nodes 64 --gpus-per-node 8 --refresh 1 --seconds 30

Starts `gpufleet simulate` as a separate process (so its CPU is not counted),
runs the real console app headless (Textual's run_test, 120x40) in this
process against every simulated node, and samples this process with psutil.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import psutil

from console.app import GpuFleetApp
from console.config import node_targets
from server.config import ConsoleSettings, NodeSettings, Settings


def start_simulate(nodes: int, gpus: int, workdir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    nodes_file, token_file = workdir / "nodes.toml", workdir / "token"
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "simulate", "--nodes", str(nodes),
         "--gpus-per-node", str(gpus), "--nodes-file", str(nodes_file), "--token-file", str(token_file)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    for line in proc.stdout:  # it prints the nodes file path once every node listens
        if line.startswith(b"nodes_file"):
            break
    return proc, nodes_file


async def measure(nodes_file: Path, refresh_s: float, seconds: float) -> dict[str, float]:
    data = tomllib.loads(nodes_file.read_text())
    settings = Settings(nodes=[NodeSettings.model_validate(n) for n in data["nodes"]])
    targets = node_targets(settings)
    me = psutil.Process()
    started = time.perf_counter()
    app = GpuFleetApp(ConsoleSettings(refresh_s=refresh_s, request_timeout_s=5.0), targets)
    figures: dict[str, float] = {}
    async with app.run_test(size=(120, 40)) as pilot:
        while not (all(n.reachable for n in app.fleet.nodes.values())
                   and getattr(app.screen, "_drawn_version", -1) == app.fleet.version):
            await pilot.pause(0.01)
            if time.perf_counter() - started > 60:
                raise SystemExit("not every node answered within 60 s")
        figures["first_full_screen_s"] = time.perf_counter() - started
        await pilot.pause(2.0)  # settle
        cpu0, wall0, redraws0 = me.cpu_times(), time.perf_counter(), app.redraws
        polls0 = sum(len(h) for n in app.fleet.nodes.values() for h in list(n.histories.values())[:1])
        rss: list[float] = []
        while time.perf_counter() - wall0 < seconds:
            await pilot.pause(0.5)
            rss.append(me.memory_info().rss / 2**20)
        cpu1, wall1 = me.cpu_times(), time.perf_counter()
        polls1 = sum(len(h) for n in app.fleet.nodes.values() for h in list(n.histories.values())[:1])
        busy = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        figures["cpu_pct_of_one_core"] = 100 * busy / (wall1 - wall0)
        figures["rss_mb_max"] = max(rss)
        figures["polls_per_node_per_s"] = (polls1 - polls0) / len(targets) / (wall1 - wall0)
        figures["redraws_per_s"] = (app.redraws - redraws0) / (wall1 - wall0)
        latencies = []
        for key in ["down"] * 10 + ["s", "r"] * 5:
            t0 = time.perf_counter()
            await pilot.press(key)  # returns once the key's handlers ran
            await pilot.pause()  # and the resulting refresh was processed
            latencies.append((time.perf_counter() - t0) * 1000)
        figures["pilot_press_ms_median"] = statistics.median(latencies)
        figures["pilot_press_ms_max"] = max(latencies)
        # Key event in -> the table's state changed and the next screen update flushed.
        from textual import events

        table = app.screen.query_one("FleetTable")
        handled = []
        for key in ["down", "up"] * 10:
            before = table.cursor
            t0 = time.perf_counter()
            app.post_message(events.Key(key, None))
            while table.cursor == before:
                await asyncio.sleep(0.0005)
            await asyncio.sleep(0)  # one more turn: the refresh the change scheduled
            handled.append((time.perf_counter() - t0) * 1000)
        figures["key_to_state_ms_median"] = statistics.median(handled)
        figures["key_to_state_ms_max"] = max(handled)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--refresh", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, nodes_file = start_simulate(args.nodes, args.gpus_per_node, Path(tmp))
        try:
            figures = asyncio.run(measure(nodes_file, args.refresh, args.seconds))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"nodes={args.nodes} gpus/node={args.gpus_per_node} refresh={args.refresh}s "
          f"window={args.seconds:.0f}s cores={psutil.cpu_count()}")
    for name, value in figures.items():
        print(f"  {name:<26} {value:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

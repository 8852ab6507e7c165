"""Console speed end to end: the real `gpufleet console` on a pseudo-terminal against `gpufleet simulate`.

Usage:  .venv/bin/python bench/bench_console.py --nodes 64 --gpus-per-node 8 --refresh 1

Starts `gpufleet simulate` (its own process, so its CPU is not counted), then
`gpufleet console --nodes-file <its nodes file>` on a pty sized 120x40 with
TERM=xterm-256color, exactly as a user's terminal would run it. A reader
thread drains the pty and timestamps what the console writes. Measured:

- first screen: launch -> the first frame with the fleet summary, and launch
  -> "N/N nodes up" written;
- CPU % of one core and RSS of the console process (psutil) over a window, in
  each view: grouped, flat (`v`) and processes (`o`);
- key -> screen: the bytes of a key are written to the pty, and the clock
  stops when the console has written the change that key causes (`s` cycles
  the sort column and the status line's "sort <column> <arrow>" changes; `/`
  writes the filter box's placeholder; a letter typed in the filter box shows
  as 'filter “<text>”'; `v` and `o` switch views and the status line names the
  new one). Presses are spaced by a random 0.3-0.8 s so they land at every
  phase of the poll cycle.
"""

from __future__ import annotations

import argparse
import codecs
import fcntl
import os
import pty
import random
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
GPUFLEET = [str(Path(sys.executable).parent / "gpufleet")]  # --gpufleet replaces it
SORT_KEYS = ("node", "memory", "util", "temp", "power", "procs", "holder")
ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[PX^_][^\x1b]*\x1b\\|[()][0-9A-Za-z]|[=>78cDEHM])")


def start_simulate(nodes: int, gpus: int, workdir: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
    nodes_file = workdir / "nodes.toml"
    proc = subprocess.Popen(
        [*GPUFLEET, "simulate", "--nodes", str(nodes), "--gpus-per-node", str(gpus),
         "--nodes-file", str(nodes_file), "--token-file", str(workdir / "token")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:  # it prints the nodes file path once every node listens
        if line.startswith(b"nodes_file"):
            return proc, nodes_file
    raise SystemExit("gpufleet simulate exited before serving")


def _controlling_tty() -> None:
    # In the child, after setsid: the pty (already on fd 0) becomes its controlling terminal.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Watch:
    """Waits for ``text`` in what the console writes from now on; ``at`` is when it arrived."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.seen: list[str] = []
        self.at: float | None = None
        self.done = threading.Event()


class Terminal:
    """A process on a pseudo-terminal of a fixed size; a thread drains and timestamps its output."""

    def __init__(self, argv: list[str], env: dict[str, str], cols: int, rows: int) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     cwd=ROOT, start_new_session=True, preexec_fn=_controlling_tty)
        os.close(slave)
        self.bytes_out = 0
        self._watches: list[Watch] = []
        self._lock = threading.Lock()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        threading.Thread(target=self._drain, daemon=True).start()

    def watch(self, text: str) -> Watch:
        watch = Watch(text)
        with self._lock:
            self._watches.append(watch)
        return watch

    def send(self, data: bytes) -> float:
        sent = time.perf_counter()
        os.write(self.master, data)
        return sent

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 1 << 16)
            except OSError:  # the console exited and the pty closed
                return
            if not chunk:
                return
            arrived = time.perf_counter()
            self.bytes_out += len(chunk)
            text = self._decoder.decode(chunk)
            with self._lock:
                for watch in list(self._watches):
                    watch.seen.append(text)
                    # Escape sequences may split a label (colours, cursor moves): match on text only.
                    if watch.text in ANSI.sub("", "".join(watch.seen)):
                        watch.at = arrived
                        watch.done.set()
                        self._watches.remove(watch)
                    elif len(watch.seen) > 64:  # keep the search short; labels are small
                        watch.seen = ["".join(watch.seen)[-4096:]]

    def wait(self, watch: Watch, timeout: float) -> float | None:
        watch.done.wait(timeout)
        with self._lock:
            if watch in self._watches:
                self._watches.remove(watch)
        return watch.at


def summary(values: list[float]) -> str:
    if not values:
        return "no samples"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (f"median {statistics.median(values):6.1f} ms  p95 {p95:6.1f} ms  "
            f"max {max(values):6.1f} ms  (n={len(values)})")


def press_sort(term: Terminal, presses: int, rng: random.Random) -> tuple[list[float], int]:
    """``s`` presses: the summary's sort label changes to the next column."""
    latencies, missed, current = [], 0, "node"
    for _ in range(presses):
        time.sleep(rng.uniform(0.3, 0.8))
        current = SORT_KEYS[(SORT_KEYS.index(current) + 1) % len(SORT_KEYS)]
        arrow = "▲" if current in ("node", "holder") else "▼"
        watch = term.watch(f"sort {current} {arrow}")
        sent = term.send(b"s")
        at = term.wait(watch, 10.0)
        if at is None:
            missed += 1
        else:
            latencies.append((at - sent) * 1000)
    return latencies, missed


def press_filter(term: Terminal, presses: int, rng: random.Random) -> tuple[list[float], int]:
    """``/`` opens the filter box (its placeholder is written); escape closes it again."""
    latencies, missed = [], 0
    for _ in range(presses):
        time.sleep(rng.uniform(0.3, 0.8))
        watch = term.watch("filter: node, GPU")
        sent = term.send(b"/")
        at = term.wait(watch, 10.0)
        if at is None:
            missed += 1
        else:
            latencies.append((at - sent) * 1000)
        term.send(b"\x1b")
        time.sleep(0.5)  # a lone escape waits out the escape-sequence timeout
    return latencies, missed


def press_filter_keys(term: Terminal, presses: int, rng: random.Random) -> tuple[list[float], int]:
    """Letters typed into the open filter box: the status line shows the text so far."""
    latencies, missed = [], 0
    term.send(b"/")
    time.sleep(0.5)
    typed = ""
    for _ in range(presses):
        time.sleep(rng.uniform(0.3, 0.8))
        letter = rng.choice("dgxh10")
        if len(typed) >= 6:  # start again rather than filter everything away
            term.send(b"\x7f" * len(typed))
            typed = ""
            time.sleep(0.5)
        typed += letter
        watch = term.watch(f"filter “{typed}”")
        sent = term.send(letter.encode())
        at = term.wait(watch, 10.0)
        if at is None:
            missed += 1
        else:
            latencies.append((at - sent) * 1000)
    term.send(b"\x1b")
    time.sleep(0.5)
    return latencies, missed


BY_KEY: dict[str, list[float]] = {}  # press_views' latencies of each key, for the per-key lines


def press_views(term: Terminal, presses: int, rng: random.Random) -> tuple[list[float], int]:
    """`v` (grouped <-> flat) and `o` (processes <-> back): the status line names the view."""
    latencies, missed = [], 0
    steps = [(b"v", "flat · sort"), (b"v", "grouped · sort"), (b"o", "processes · sort"), (b"o", "grouped · sort")]
    for i in range(presses):
        time.sleep(rng.uniform(0.3, 0.8))
        key, text = steps[i % len(steps)]
        watch = term.watch(text)
        sent = term.send(key)
        at = term.wait(watch, 10.0)
        if at is None:
            missed += 1
        else:
            latencies.append((at - sent) * 1000)
            BY_KEY.setdefault(f"{key.decode()} -> {text.split(' ')[0]}", []).append(latencies[-1])
    return latencies, missed


def usage(console: psutil.Process, simulate: psutil.Process, term: Terminal, seconds: float) -> dict[str, str]:
    """CPU of the console (and of the simulator, for context), RSS and terminal output over a window."""
    cpu0, wall0, out0 = console.cpu_times(), time.perf_counter(), term.bytes_out
    sim0 = simulate.cpu_times()
    rss = []
    while time.perf_counter() - wall0 < seconds:
        time.sleep(0.5)
        rss.append(console.memory_info().rss / 2**20)
    cpu1, wall1, sim1 = console.cpu_times(), time.perf_counter(), simulate.cpu_times()
    busy = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    sim_busy = (sim1.user - sim0.user) + (sim1.system - sim0.system)
    return {
        "CPU, % of one core": f"{100 * busy / (wall1 - wall0):.1f} %",
        # The simulator shares the cores: it is context for the latencies, not the console's.
        "simulator CPU (same cores)": f"{100 * sim_busy / (wall1 - wall0):.1f} %",
        "RSS max": f"{max(rss):.0f} MB",
        "terminal output": f"{(term.bytes_out - out0) / (wall1 - wall0) / 1024:.0f} KiB/s",
    }


def launch(args: argparse.Namespace, nodes_file: Path, env: dict[str, str]) -> tuple[Terminal, dict[str, str]]:
    """Start the console and wait for its first frame and for every node; return their times."""
    argv = [*GPUFLEET, "console", "--nodes-file", str(nodes_file), "--refresh", str(args.refresh), "--no-demo"]
    if args.profile:  # cProfile of the console's main thread (its event loop), written on q
        argv = [sys.executable, "-m", "cProfile", "-o", str(args.profile), "-m", "gpufleet.server.cli", *argv[1:]]
    term = Terminal(argv, env, 120, 40)
    first, everyone = term.watch("nodes up"), term.watch(f"{args.nodes}/{args.nodes} nodes up")
    if term.wait(first, 120) is None or term.wait(everyone, 120) is None:
        term.proc.terminate()
        raise SystemExit("the console did not draw every node within 120 s")
    return term, {
        "first frame with the fleet": f"{first.at - term.started:.2f} s",  # type: ignore[operator]
        "every node drawn": f"{everyone.at - term.started:.2f} s",  # type: ignore[operator]
    }


def quit_console(term: Terminal) -> int | None:
    term.send(b"\x03")  # ctrl+c: a priority binding, so it quits whatever has focus
    try:
        return term.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        term.proc.terminate()
        term.proc.wait(timeout=20)
        return None


def measure(args: argparse.Namespace, nodes_file: Path, env: dict[str, str],
            simulate: psutil.Process) -> dict[str, str]:
    figures: dict[str, str] = {}
    # Cold: a fresh data dir, so the console's embedded server creates its store and loads
    # the sample month. Then warm, as every later launch: the store is already there.
    term, times = launch(args, nodes_file, env)
    figures.update({f"cold: {name}": value for name, value in times.items()})
    quit_console(term)
    term, times = launch(args, nodes_file, env)
    figures.update({f"warm: {name}": value for name, value in times.items()})
    try:
        console = psutil.Process(term.proc.pid)
        time.sleep(2.0)  # settle: every poller is on its steady schedule
        views = [v for v in (("grouped", b""), ("flat", b"v"), ("processes", b"o")) if v[0] in args.views]
        for view, key in views:
            if key:
                term.send(key)
                time.sleep(2.0)  # settle in the new view
            figures.update({f"{view}: {name}": value
                            for name, value in usage(console, simulate, term, args.seconds).items()})
        if "processes" in args.views:
            term.send(b"o")  # back to the flat view
            time.sleep(0.5)
        if "flat" in args.views:
            term.send(b"v")  # and to grouped, for the keys
            time.sleep(1.0)
        rng = random.Random(7)
        for name, label, run in (("sort", "key s -> sort label on screen", press_sort),
                                 ("filter", "key / -> filter box on screen", press_filter),
                                 ("typing", "filter keystroke -> text on screen", press_filter_keys),
                                 ("views", "key v / o -> view on screen", press_views)):
            if name not in args.keys:
                continue
            presses = args.presses if run is not press_filter else max(5, args.presses // 3)
            ms, missed = run(term, presses, rng)
            figures[label] = summary(ms) + (f", {missed} missed" if missed else "")
            if run is press_views:  # which switch is slow: v (grouped <-> flat) or o (processes)
                figures.update({f"  {step}": summary(values) for step, values in BY_KEY.items()})
        figures["exit code after ctrl+c"] = str(quit_console(term))
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
    parser.add_argument("--seconds", type=float, default=20.0, help="CPU / RSS window")
    parser.add_argument("--presses", type=int, default=30)
    parser.add_argument("--views", type=lambda v: v.split(","), default=["grouped", "flat", "processes"],
                        help="views to measure CPU and RSS in (an older console has only grouped)")
    parser.add_argument("--keys", type=lambda v: v.split(","), default=["sort", "filter", "typing", "views"],
                        help="key timings to take: sort, filter, typing, views")
    parser.add_argument("--gpufleet", type=Path, default=None, metavar="PATH",
                        help="the gpufleet executable to run (default: the one beside this Python)")
    parser.add_argument("--profile", type=Path, default=None, metavar="PATH",
                        help="run the console under cProfile, stats to PATH (slows it: figures are not comparable)")
    args = parser.parse_args()
    if args.gpufleet is not None:  # e.g. an older console, to compare on the same machine and load
        GPUFLEET[:] = [str(args.gpufleet)]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        env = {**os.environ, "TERM": "xterm-256color", "COLORTERM": "truecolor",
               "XDG_DATA_HOME": str(workdir / "data"), "XDG_CONFIG_HOME": str(workdir / "config"),
               "XDG_STATE_HOME": str(workdir / "state"), "XDG_CACHE_HOME": str(workdir / "cache")}
        env.pop("TEXTUAL", None)
        simulate, nodes_file = start_simulate(args.nodes, args.gpus_per_node, workdir, env)
        try:
            figures = measure(args, nodes_file, env, psutil.Process(simulate.pid))
        finally:
            simulate.terminate()
            simulate.wait(timeout=30)
    print(f"nodes={args.nodes} gpus/node={args.gpus_per_node} refresh={args.refresh}s "
          f"window={args.seconds:.0f}s terminal=120x40 cores={psutil.cpu_count()} "
          f"load={os.getloadavg()[0]:.1f}")
    for name, value in figures.items():
        print(f"  {name:<32} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

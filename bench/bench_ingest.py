"""Ingest throughput through HTTP: wrk posting fresh samples to a real `gpufleet serve`.

For each body size: a fresh DuckDB store, an ingest key, `gpufleet serve` in its own
process (sampler off, ingest rate limit lifted), then wrk with bench/ingest.lua at 16
connections. The Lua script sends samples nobody sent before (no duplicate short-cuts)
and counts the samples the server acknowledged; after a graceful stop the store is
opened and its rows are compared with that count: stored = acknowledged + whole
bodies that were in flight when wrk stopped counting (wrk does not wait for the
answers of its last requests; the server stored them), at most one per connection.

    .venv/bin/python bench/bench_ingest.py                 # 1,000- and 100-sample bodies, 15 s each
    .venv/bin/python bench/bench_ingest.py --sizes 1000 --duration 30

Needs wrk (Debian/Ubuntu: `apt-get install -y wrk`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gpufleet.server.store import MetricsStore  # noqa: E402

LUA = Path(__file__).with_name("ingest.lua")
_LISTENING = re.compile(r"gpufleet serving (http\S+)")
_SUMMARY = re.compile(r"GPUFLEET acked=(\d+) non200=(\d+) p50_us=(\d+) p90_us=(\d+) "
                      r"p99_us=(\d+) max_us=(\d+)")
_REQUESTS = re.compile(r"(\d+) requests in ([\d.]+)(m?s)")


@dataclass
class Run:
    size: int
    requests: int
    seconds: float
    acked: int
    non200: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    stored: int
    server_cpu_s: float = 0.0  # the server process's CPU time (user + system) during wrk's run

    @property
    def samples_per_s(self) -> float:
        return self.acked / self.seconds

    @property
    def in_flight_bodies(self) -> float:
        """Bodies stored whose answer came after wrk stopped counting (at most one per connection)."""
        return (self.stored - self.acked) / self.size

    def consistent(self, connections: int) -> bool:
        extra = self.stored - self.acked
        return extra >= 0 and extra % self.size == 0 and extra // self.size <= connections

    def line(self) -> str:
        return (f"{self.size:>6} samples/body  {self.requests / self.seconds:8.1f} req/s  "
                f"{self.samples_per_s:10,.0f} samples/s  p50 {self.p50_ms:6.1f} ms  "
                f"p90 {self.p90_ms:6.1f} ms  p99 {self.p99_ms:6.1f} ms  max {self.max_ms:6.1f} ms  "
                f"non-200 {self.non200}  acked {self.acked:,}  stored {self.stored:,} "
                f"(= acked + {self.in_flight_bodies:g} bodies in flight at wrk's stop)  "
                f"server CPU {1000 * self.server_cpu_s / max(self.acked, 1) * 1000:.1f} ms per 1,000 samples")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(db: Path, config: Path) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "gpufleet.server.cli", "serve", "--port", "0", "--db", str(db),
           "--config", str(config), "--simulate", "--no-sampler", "--log-level", "INFO"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=env, cwd=ROOT)
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        match = _LISTENING.search(line)
        if match:
            # Keep draining stderr in the background so access logs never block the server.
            subprocess.Popen(["cat"], stdin=proc.stderr, stdout=subprocess.DEVNULL)
            return proc, match.group(1)
    proc.kill()
    raise SystemExit("gpufleet serve did not start")


def run_size(size: int, args: argparse.Namespace, workdir: Path) -> Run:
    db = workdir / f"bench-{size}.duckdb"
    config = workdir / "config.toml"
    config.write_text("[rate_limits.ingest]\nrequests = 100000000\nper_s = 1\n"
                      f"[limits]\nmax_samples_per_batch = {max(size, 10_000)}\n")
    with MetricsStore.open(db) as store:
        key = store.create_key("bench", ["ingest"], "bench").key
    proc, url = start_server(db, config)
    try:
        cmd = ["wrk", "-t", str(args.threads), "-c", str(args.connections), "-d",
               f"{args.duration}s", "--timeout", "30s", "--latency", "-s", str(LUA), url,
               "--", str(size), str(args.gpus), key, f"s{size}"]
        cpu_before = process_cpu_s(proc.pid)
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        server_cpu_s = process_cpu_s(proc.pid) - cpu_before
        out, err = done.stdout, done.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    if args.verbose:
        print(out)
    if "first error" in err:
        print(err.strip(), file=sys.stderr)
    summary = _SUMMARY.search(out)
    requests = _REQUESTS.search(out)
    if not summary or not requests:
        raise SystemExit(f"cannot parse wrk output:\n{out}")
    seconds = float(requests.group(2)) / (1000 if requests.group(3) == "ms" else 1)
    with MetricsStore.open(db) as store:
        stored = store.sample_count("bench")
        size_bytes = db.stat().st_size
    acked, non200, p50, p90, p99, worst = (int(v) for v in summary.groups())
    run = Run(size, int(requests.group(1)), seconds, acked, non200, p50 / 1000, p90 / 1000,
              p99 / 1000, worst / 1000, stored, server_cpu_s)
    if args.verbose:
        print(f"  store: {size_bytes / 1e6:.1f} MB for {stored:,} rows")
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,100", help="samples per body, comma-separated")
    parser.add_argument("--duration", type=int, default=15, help="seconds of wrk per size")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--gpus", type=int, default=4,
                        help="GPUs per simulated host in a body (must divide each size)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print wrk's own output")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found. Install it: apt-get install -y wrk", file=sys.stderr)
        return 2
    print(f"wrk {args.connections} connections x {args.duration}s, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="gpufleet-bench-") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            run = run_size(size, args, Path(tmp))
            print(run.line(), flush=True)
            if not run.consistent(args.connections):
                print("  STORED ROWS DO NOT MATCH ACKNOWLEDGED SAMPLES", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

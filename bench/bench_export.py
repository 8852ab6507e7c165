"""gpufleet export of a 10 M-sample store: time and peak memory, first run and a rerun.

    .venv/bin/python bench/bench_export.py [--samples 10000000]

The store is bulk-filled as bench_chargeback.py fills it (31 days, 60 s apart, enough
GPUs for the count) and its rollup built; then ``gpufleet export --db`` runs in its
own process (peak RSS is that process's), once into an empty folder and once more
(nothing new), and the folder is read back with DuckDB to check the row count.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_chargeback import fill

from gpufleet.server.store import MetricsStore

# The child reports its own peak (VmHWM: this process image only). getrusage's children
# figure would count the bench's own memory, which a forked child starts out sharing.
_CHILD = """
import runpy, sys
sys.argv = ["gpufleet", "export", "-o", sys.argv[1], "--db", sys.argv[2]]
try:
    runpy.run_module("gpufleet.server.cli", run_name="__main__")
except SystemExit as exc:
    code = exc.code
finally:
    peak = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print("PEAK", int(peak.split()[1]), file=sys.stderr)
"""


def run_export(db: Path, out: Path) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, its output line) of one ``gpufleet export`` process."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(out), str(db)], capture_output=True,
                          text=True, check=True)
    wall = time.perf_counter() - started
    peak_kib = int(proc.stderr.rsplit("PEAK", 1)[1])
    return wall, peak_kib / 1024, proc.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o700)
        db = Path(tmp) / "store" / "ex.duckdb"
        with MetricsStore.open(db) as store:
            load_s = fill(store, args.samples)
        size = db.stat().st_size / 2**20
        print(f"store: {args.samples:,} samples, filled + rolled up in {load_s:.1f} s, {size:,.0f} MiB")
        out = Path(tmp) / "lake"
        wall, peak, line = run_export(db, out)
        print(f"first run: {wall:.1f} s, peak RSS {peak:,.0f} MiB ({line})")
        wall, peak2, line = run_export(db, out)
        print(f"rerun, nothing new: {wall:.1f} s, peak RSS {peak2:,.0f} MiB ({line})")
        on_disk = sum(p.stat().st_size for p in out.rglob("*.parquet")) / 2**20
        rows = duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}/samples/**/*.parquet', "
                          "hive_partitioning=true)").fetchall()[0][0]
        print(f"Parquet: {on_disk:,.0f} MiB, {rows:,} sample rows read back")


if __name__ == "__main__":
    main()

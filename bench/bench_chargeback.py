"""31-day chargeback report over 1 M, 3 M and 10 M stored samples, JSON and CSV.

    .venv/bin/python bench/bench_chargeback.py [--sizes 1000000,3000000,10000000] [--repeat 5] [--shared 10]

Samples are bulk-generated inside DuckDB (60 s apart, enough GPUs to fill 31
days), the rollup is built once as after a load, then each report is timed
end to end (query + pricing + pydantic + serialisation). The raw-samples path
(what a report with a non-default interval uses) is timed too, for contrast.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb

from gpufleet.server.config import Pricing
from gpufleet.server.store import MetricsStore, usage_sql
from gpufleet.server.store.timeutil import epoch_us

FROM, TO = date(2026, 1, 1), date(2026, 1, 31)
MINUTES = 31 * 24 * 60

FILL_SQL = """
INSERT INTO samples (account, ts, gpu_index, gpu_uuid, power_draw_w, utilization_gpu_pct,
    utilization_memory_pct, temperature_c, memory_used_mb, gpu_name, energy_delta_j, team_id,
    model_tag, received_at)
SELECT 'bench', make_timestamp($start_us + (i // $gpus) * 60000000), (i % $gpus) % 8,
       'GPU-' || (i % $gpus)::VARCHAR, 100 + hash(i) % 500, hash(i, 1) % 101, 30, 60, 40000,
       ['NVIDIA A100-SXM4-80GB', 'NVIDIA H100 80GB HBM3', 'NVIDIA L40S', 'NVIDIA L4'][1 + (i % $gpus) % 4],
       CASE WHEN i % 5 = 0 THEN NULL ELSE 20000 + hash(i, 2) % 10000 END,
       ['ml-infra', 'inference', 'research', 'data-science', NULL][1 + (i % $gpus) % 5],
       ['llama3-70b', 'qwen-27b', 'sdxl', 'bge-embed', 'whisper', NULL][1 + (i // $gpus // 1440 + i % $gpus) % 6],
       make_timestamp($start_us + (i // $gpus) * 60000000 + 1000000)
FROM range($n) t(i)
"""

# --shared P: P % of the GPUs are shared: each reading gets the 0.75 share of its own row
# and a second workload's row (another team and model) with the other 0.25.
SHARE_SQL = """
UPDATE samples SET gpu_fraction = 0.75 WHERE hash(gpu_uuid) % 100 < $pct;
INSERT INTO samples BY NAME
SELECT * REPLACE ('search' AS team_id, 'bge-embed' AS model_tag, 0.25 AS gpu_fraction)
FROM samples WHERE hash(gpu_uuid) % 100 < $pct;
"""


def fill(store: MetricsStore, n: int, shared_pct: int = 0) -> float:
    gpus = -(-n // MINUTES)
    started = time.perf_counter()

    def load(con: duckdb.DuckDBPyConnection) -> None:
        con.execute(FILL_SQL, {"n": n, "gpus": gpus, "start_us": epoch_us(datetime(2026, 1, 1, tzinfo=UTC))})
        if shared_pct:
            for statement in SHARE_SQL.strip().split(";")[:-1]:
                con.execute(statement, {"pct": shared_pct})
        con.execute("CREATE OR REPLACE TEMP TABLE redo AS SELECT DISTINCT account, gpu_uuid FROM samples")
        usage_sql.rebuild_tails(con)  # every GPU's tail: its newest time's workloads

    store.writer.call(load)
    store.rebuild_rollup()
    return time.perf_counter() - started


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    fn()  # warm
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs), max(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000000,3000000,10000000")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--shared", type=int, default=0, metavar="PCT",
                        help="percent of GPUs shared by two workloads (0.75 / 0.25)")
    args = parser.parse_args()
    pricing = Pricing()
    raw_pricing = Pricing(expected_interval_s=59.0)  # not the rollup's: forces the raw path
    for n in (int(x) for x in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            store = MetricsStore.open(Path(tmp) / "cb.duckdb")
            load_s = fill(store, n, args.shared)
            json_s = timed(lambda st=store: st.chargeback("bench", FROM, TO, pricing).model_dump_json(by_alias=True),
                           args.repeat)
            csv_s = timed(lambda st=store: st.chargeback_csv("bench", FROM, TO, pricing), args.repeat)
            raw_s = timed(lambda st=store: st.chargeback("bench", FROM, TO, raw_pricing), 1)
            rollup_rows = store.query("SELECT count(*) FROM usage_daily")[0][0]
            stored = store.sample_count()
            store.close()
        shared = f", {stored - n:,} rows of a second workload on shared GPUs" if stored != n else ""
        print(f"{n:>11,} samples{shared} (load+rollup {load_s:5.1f} s, {rollup_rows:,} rollup rows): "
              f"JSON median {json_s[0] * 1000:7.1f} ms (max {json_s[1] * 1000:.1f}), "
              f"CSV median {csv_s[0] * 1000:7.1f} ms (max {csv_s[1] * 1000:.1f}), "
              f"raw-samples path {raw_s[0] * 1000:8.1f} ms")


if __name__ == "__main__":
    main()

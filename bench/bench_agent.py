"""The agent's own cost: CPU time per sample per GPU and resident memory, on the fake NVML with 8 GPUs.

Run: .venv/bin/python bench/bench_agent.py [--ticks N]
Each tick does what the agent does per interval: snapshot all GPUs (fake
NVML), attribute their processes (real /proc reads of live PIDs), shape the
samples, encode the batch and append it to the spool with fsync. Delivery is
left out: its cost is one HTTP request per batch, the server's side.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpufleet.server.agent.attribution import ProcessAttributor
from gpufleet.server.agent.runner import encode_batch
from gpufleet.server.agent.sampler import Sampler
from gpufleet.server.agent.spool import Spool
from gpufleet.server.config import AgentSettings
from gpufleet.server.gpu.base import GpuSnapshot
from gpufleet.server.gpu.nvml import NvmlBackend
from tests.fakes import pynvml as fake

GPUS = 8


def configure_node() -> None:
    me = os.getpid()
    fake.configure([
        fake.FakeGpu(uuid=f"GPU-{i:08d}-0000-0000-0000-000000000000", power_mw=300_000,
                     util_gpu=80, util_memory=40, used_mib=40_000,
                     compute_processes=[fake.FakeProcess(me, 40_000)])
        for i in range(GPUS)
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ticks", type=int, default=2000)
    args = parser.parse_args()
    configure_node()
    backend = NvmlBackend(fake)
    sampler = Sampler(backend, ProcessAttributor(AgentSettings()))
    proc = psutil.Process()
    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(Path(tmp), max_bytes=64 * 1024 * 1024)
        fake_clock = [time.monotonic()]

        def snap(n: int) -> GpuSnapshot:
            # Every tick a new second, as a 1 s agent would see.
            snapshot = backend.snapshot()
            return replace(snapshot, taken_at=snapshot.taken_at + timedelta(seconds=n))

        def shape(snapshot: GpuSnapshot) -> list[dict]:
            fake_clock[0] += 1.0
            return sampler.samples_from(snapshot, at=fake_clock[0])

        for n in range(50):  # warm-up: imports, caches
            shape(snap(n))
        rss_before = proc.memory_info().rss
        snapshot_cpu = sample_cpu = 0.0
        for n in range(50, 50 + args.ticks):
            t0 = time.process_time()
            snapshot = snap(n)
            t1 = time.process_time()
            assert len(shape(snapshot)) == GPUS
            t2 = time.process_time()
            snapshot_cpu += t1 - t0
            sample_cpu += t2 - t1
        rss_steady = proc.memory_info().rss

        batch = encode_batch(shape(snap(50 + args.ticks)))
        cpu0 = time.process_time()
        wall0 = time.perf_counter()
        for _ in range(args.ticks):
            spool.append(batch, GPUS)
        spool_cpu = time.process_time() - cpu0
        spool_wall = time.perf_counter() - wall0
        spool.close()
    per_gpu = 1e6 / args.ticks / GPUS
    print(f"ticks: {args.ticks} x {GPUS} GPUs (fake NVML, attribution of a live PID per GPU)")
    print(f"NVML snapshot (backend, incl. psutil process lookup): {snapshot_cpu * per_gpu:.1f} us CPU per GPU")
    print(f"sampler (shape, energy, attribution): {sample_cpu * per_gpu:.1f} us CPU per sample per GPU")
    total = (snapshot_cpu + sample_cpu) / args.ticks
    print(f"together: {total * 1e6 / GPUS:.1f} us CPU per sample per GPU ({total * 1e3:.3f} ms per tick)")
    print(f"spool append ({len(batch)} B batch, fsync): CPU {spool_cpu / args.ticks * 1e6:.0f} us, "
          f"wall {spool_wall / args.ticks * 1e3:.2f} ms per tick")
    print(f"resident memory after warm-up: {rss_before / 2**20:.1f} MiB; after {args.ticks} ticks: "
          f"{rss_steady / 2**20:.1f} MiB ({(rss_steady - rss_before) / 2**20:+.1f} MiB)")
    at_60s = (total + spool_cpu / args.ticks) / 60 * 100
    print(f"at the default 60 s interval: {at_60s:.5f} % of one core")
    backend.close()


if __name__ == "__main__":
    main()

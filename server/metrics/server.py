"""The server's own health as metric families: requests, latency, auth, rate limits, the store.

``HttpMetrics`` is the HTTP server's observer: every answered request is counted by
route pattern (never the raw path: that would make a series per URL), method and
status, and timed into a histogram. It runs on the event loop only, so plain
dicts need no lock.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gpufleet.server import __version__
from gpufleet.server.metrics.exposition import Family, Labels, histogram

if TYPE_CHECKING:
    from gpufleet.server.store import MetricsStore

# seconds; a scrape of /metrics sits in the first, an ingest of 10,000 samples near 0.25
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                      0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNMATCHED = "unmatched"  # 404 and 405: no route, and no raw path as a label
BEFORE_ROUTING = "http"  # refused by the HTTP layer (400, 408, 413, 431, 503) before routing


@dataclass(slots=True)
class _Timing:
    buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    total: float = 0.0
    count: int = 0


class HttpMetrics:
    """Counts and times requests; ``observe`` is the HttpServer's observer callback."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.timings: dict[tuple[str, str], _Timing] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        timing = self.timings.get((route, method))
        if timing is None:
            timing = self.timings[(route, method)] = _Timing()
        index = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        if index < len(LATENCY_BUCKETS):
            timing.buckets[index] += 1
        timing.total += seconds
        timing.count += 1

    def families(self) -> list[Family]:
        requests = Family("gpufleet_http_requests_total", "counter",
                          "HTTP requests answered, by route pattern, method and status code.")
        limited = Family("gpufleet_http_rate_limited_total", "counter",
                         "Requests refused with 429 (a rate limit), by route pattern.")
        auth = Family("gpufleet_http_auth_failures_total", "counter",
                      "Requests refused for their key: 401 (missing or unknown) or 403 "
                      "(scope), by route pattern.")
        limited_by: dict[str, int] = {}
        auth_by: dict[tuple[str, int], int] = {}
        for (route, method, status), n in sorted(self.requests.items()):
            requests.add((("route", route), ("method", method), ("code", str(status))), n)
            if status == 429:
                limited_by[route] = limited_by.get(route, 0) + n
            elif status in (401, 403):
                auth_by[(route, status)] = auth_by.get((route, status), 0) + n
        for route, n in sorted(limited_by.items()):
            limited.add((("route", route),), n)
        for (route, status), n in sorted(auth_by.items()):
            auth.add((("route", route), ("code", str(status))), n)
        series: list[tuple[Labels, list[int], float, int]] = [
            ((("route", route), ("method", method)), t.buckets, t.total, t.count)
            for (route, method), t in sorted(self.timings.items())]
        latency = histogram("gpufleet_http_request_duration_seconds",
                            "Time from a whole request received to its response, by route "
                            "pattern and method.", LATENCY_BUCKETS, series, unit="seconds")
        return [requests, latency, limited, auth]


def build_info() -> Family:
    family = Family("gpufleet_build_info", "info", "The running gpufleet (value 1).")
    family.add((("version", __version__),), 1)
    return family


def store_families(store: MetricsStore) -> list[Family]:
    """Ingest and writer health: samples stored and duplicates, queue depth, fold lag."""
    writer = store.writer
    samples = Family("gpufleet_store_samples_total", "counter",
                     "Samples submitted to the store (ingest and this node's sampler): "
                     "inserted, or duplicates of stored ones.")
    samples.add((("result", "inserted"),), writer.samples_inserted)
    samples.add((("result", "duplicate"),), writer.samples_duplicate)
    queue = Family("gpufleet_store_writer_queue_depth", "gauge",
                   "Writes waiting for the store's single writer thread.")
    queue.add((), writer.queue_depth)
    pending = Family("gpufleet_store_rollup_pending_samples", "gauge",
                     "Stored samples not yet folded into the daily usage rollup.")
    pending.add((), writer.pending_rows)
    lag = Family("gpufleet_store_rollup_lag_seconds", "gauge",
                 "How long the oldest unfolded sample has waited for the rollup (0 when "
                 "current).", unit="seconds")
    lag.add((), round(writer.fold_lag_s, 6))
    return [samples, queue, pending, lag]

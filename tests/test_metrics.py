"""GET /metrics: dcgm-exporter's series and gpufleet's own, read back by real Prometheus parsers."""

from __future__ import annotations

import shutil
import subprocess
import threading
from datetime import UTC, datetime

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from gpufleet.server.gpu.base import GpuBackend, GpuSnapshot
from gpufleet.server.gpu.nvml import NvmlBackend
from gpufleet.server.gpu.simulated import SimulatedBackend
from gpufleet.server.metrics.exposition import Family, negotiate, render
from gpufleet.server.metrics.gpu import dcgm_families, mig_profile, render_gpus
from tests.api_server import api_settings, running_app, store_app
from tests.fakes.pynvml import FakeGpu, FakeMigDevice, FakeProcess

DCGM_LABELS = {"gpu", "UUID", "device", "modelName", "Hostname"}
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                     "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def families_by_name(text: str, *, openmetrics: bool = False) -> dict[str, object]:
    parser = parse_openmetrics if openmetrics else parse_text
    return {f.name: f for f in parser(text)}


class CountingBackend(GpuBackend):
    """A simulated node that counts its readings (a scrape must not cause one)."""

    def __init__(self, inner: GpuBackend) -> None:
        self.inner = inner
        self.simulated = inner.simulated
        self.reads = 0
        self.fail = False
        self._lock = threading.Lock()

    def snapshot(self) -> GpuSnapshot:
        with self._lock:
            self.reads += 1
        if self.fail:
            raise RuntimeError("GPU is lost")
        return self.inner.snapshot()


# -- the format --------------------------------------------------------------------------


def test_label_values_and_help_are_escaped_as_both_parsers_read_them() -> None:
    family = Family("gpufleet_x_info", "info", 'help with "quotes", a \\ and\na newline')
    nasty = 'a "quoted" \\ back\nslash é 中'
    family.add((("process", nasty),), 1)
    for openmetrics in (False, True):
        parsed = families_by_name(render([family], openmetrics=openmetrics), openmetrics=openmetrics)
        fam = parsed["gpufleet_x"] if openmetrics else parsed["gpufleet_x_info"]
        assert fam.samples[0].labels["process"] == nasty
        assert fam.documentation == 'help with "quotes", a \\ and\na newline'


def test_a_counter_without_total_keeps_its_name_in_openmetrics() -> None:
    family = Family("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter", "Energy (mJ).")
    family.add((("gpu", "0"),), 12345)
    text = render([family], openmetrics=True)
    assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION unknown" in text
    sample = families_by_name(text, openmetrics=True)["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"].samples[0]
    assert (sample.name, sample.value) == ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", 12345)
    assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter" in render([family], openmetrics=False)


@pytest.mark.parametrize(("accept", "openmetrics"), [
    (None, False),
    ("", False),
    ("text/plain", False),
    ("*/*", False),
    (PROMETHEUS_ACCEPT, True),
    ("application/openmetrics-text", True),
    ("application/openmetrics-text; version=0.0.1", True),
    ("application/openmetrics-text; version=2.0.0", False),  # a version we do not write
    ("application/openmetrics-text;q=0", False),
    ("text/plain;q=0.9, application/openmetrics-text;q=0.5", False),
    ("text/plain;version=0.0.4;q=0.5, application/openmetrics-text;q=0.8", True),
    ("application/openmetrics-text;q=nonsense, text/plain", False),
])
def test_the_format_follows_accept_and_its_q_values(accept: str | None, openmetrics: bool) -> None:
    assert negotiate(accept) is openmetrics


def test_mig_instances_carry_dcgm_exporters_instance_labels(fake_nvml) -> None:
    fake_nvml.configure([
        FakeGpu(name="NVIDIA A100-SXM4-80GB", uuid="GPU-mig-0", mig_mode=fake_nvml.NVML_DEVICE_MIG_ENABLE,
                used_mib=30000, energy_mj=18_750_123,
                mig_devices=[FakeMigDevice("MIG-a", "NVIDIA A100-SXM4-80GB MIG 3g.40gb", 40192, 20000),
                             FakeMigDevice("MIG-b", "NVIDIA A100-SXM4-80GB MIG 1g.10gb", 9728, 1000)]),
        FakeGpu(name="NVIDIA L40S", uuid="GPU-plain-1", total_mib=46068, used_mib=1000,
                compute_processes=[FakeProcess(4242, 1000)]),
    ])
    snapshot = NvmlBackend(nvml_module=fake_nvml).snapshot()
    families = {f.name: f for f in dcgm_families(snapshot)}
    used = families["DCGM_FI_DEV_FB_USED"].samples
    mig = [dict(labels) for _, labels, _ in used if dict(labels)["UUID"] == "GPU-mig-0"]
    assert [(m["GPU_I_PROFILE"], m["GPU_I_ID"]) for m in mig] == [("3g.40gb", "0"), ("1g.10gb", "1")]
    assert [v for _, labels, v in used if dict(labels)["UUID"] == "GPU-mig-0"] == [20000, 1000]
    plain = [dict(labels) for _, labels, _ in used if dict(labels)["UUID"] == "GPU-plain-1"]
    assert plain == [{"gpu": "1", "UUID": "GPU-plain-1", "device": "nvidia1",
                      "modelName": "NVIDIA L40S", "Hostname": snapshot.node.hostname}]
    energy = families["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"].samples
    assert energy[0][2] == 18_750_123  # NVML's mJ, as DCGM reports them
    rendered = render_gpus(snapshot, {1: [{"team_id": "vision"}]})
    parsed = families_by_name(rendered.text)
    memory = parsed["gpufleet_gpu_process_memory_bytes"].samples[0]
    assert memory.labels["pid"] == "4242" and memory.value == 1000 * 1024 * 1024
    list(parse_openmetrics(rendered.openmetrics + "# EOF\n"))  # well-formed OpenMetrics too
    assert mig_profile("MIG 2g.20gb+me") == "2g.20gb+me" and mig_profile(None) == ""


# -- the route ---------------------------------------------------------------------------


async def test_a_scrape_has_every_dcgm_series_with_dcgm_labels_and_the_snapshots_values(
        fixed_clock) -> None:
    backend = SimulatedBackend(clock=fixed_clock)
    expected = backend.snapshot()
    async with running_app(backend=backend) as srv:
        response = await srv.http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        families = families_by_name(response.text)
    types = {name: families[name].type for name in (
        "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_MEM_COPY_UTIL", "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE",
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_MEM_CLOCK")}
    assert types["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"] == "counter"
    assert {t for n, t in types.items() if n != "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"} == {"gauge"}
    by_gpu = {gpu.index: gpu for gpu in expected.gpus}
    for sample in families["DCGM_FI_DEV_FB_USED"].samples:
        assert set(sample.labels) == DCGM_LABELS
        gpu = by_gpu[int(sample.labels["gpu"])]
        assert sample.labels["UUID"] == gpu.uuid and sample.labels["modelName"] == gpu.name
        assert sample.labels["Hostname"] == expected.node.hostname
        assert sample.labels["device"] == f"nvidia{gpu.index}"
        assert sample.value == gpu.memory.used_mb
    temps = {int(s.labels["gpu"]): s.value for s in families["DCGM_FI_DEV_GPU_TEMP"].samples}
    assert temps == {gpu.index: gpu.temperature_c for gpu in expected.gpus}
    power = {int(s.labels["gpu"]): s.value for s in families["DCGM_FI_DEV_POWER_USAGE"].samples}
    assert power == {gpu.index: gpu.power_draw_w for gpu in expected.gpus}
    info = families["gpufleet_gpu_attribution_info"].samples
    assert {s.labels["team"] for s in info} >= {g.team_id for g in expected.gpus if g.team_id}
    node = families["gpufleet_node_info"].samples[0].labels
    assert (node["simulated"], node["backend"]) == ("true", "simulated")
    assert families["gpufleet_gpu_backend_up"].samples[0].value == 1


async def test_openmetrics_when_asked_and_a_strict_parser_reads_it() -> None:
    async with running_app() as srv:
        await srv.http.get("/no/such/path")
        response = await srv.http.get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
    assert response.headers["content-type"] == \
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    assert response.text.endswith("# EOF\n")
    families = families_by_name(response.text, openmetrics=True)
    assert families["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"].type == "unknown"
    requests = families["gpufleet_http_requests"]
    assert requests.type == "counter"
    unmatched = [s for s in requests.samples if s.labels["route"] == "unmatched"]
    assert [(s.labels["code"], s.value) for s in unmatched if s.name.endswith("_total")] == [("404", 1)]


async def test_a_scrape_reads_no_gpu_the_feed_reads_every_refresh_s() -> None:
    backend = CountingBackend(SimulatedBackend())
    settings = api_settings(**{"metrics.refresh_s": 3600.0})
    async with running_app(settings, backend=backend) as srv:
        first = await srv.http.get("/metrics")
        assert first.status_code == 200
        reads = backend.reads
        for _ in range(20):
            assert (await srv.http.get("/metrics")).status_code == 200
        assert backend.reads == reads == 1
        # a sampler tick's snapshot is published to the feed: a scrape serves it
        srv.app.feed.publish(backend.inner.snapshot(), {0: [{"team_id": "published-team"}]})
        text = (await srv.http.get("/metrics")).text
    assert 'team="published-team"' in text and backend.reads == 1


async def test_a_failing_backend_serves_no_gpu_series_and_says_so() -> None:
    backend = CountingBackend(SimulatedBackend())
    backend.fail = True
    async with running_app(api_settings(**{"metrics.refresh_s": 3600.0}), backend=backend) as srv:
        response = await srv.http.get("/metrics")
    assert response.status_code == 200
    families = families_by_name(response.text)
    assert "DCGM_FI_DEV_GPU_UTIL" not in families
    assert families["gpufleet_gpu_backend_up"].samples[0].value == 0


async def test_loopback_is_open_a_proxied_or_remote_client_needs_a_read_key(tmp_path) -> None:
    async with store_app(tmp_path / "m.duckdb") as srv:
        assert (await srv.http.get("/metrics")).status_code == 200
        proxied = {"X-Forwarded-For": "203.0.113.9"}
        refused = await srv.http.get("/metrics", headers=proxied)
        assert refused.status_code == 401 and refused.json() == {"error": "Missing or invalid API key"}
        assert (await srv.http.get("/metrics", headers={**proxied, **srv.auth("ingest")})).status_code == 403
        assert (await srv.http.get("/metrics", headers={**proxied, **srv.auth("read")})).status_code == 200
        assert (await srv.http.get("/metrics", headers={"Forwarded": "for=203.0.113.9"})).status_code == 401


async def test_access_key_wants_a_key_even_on_loopback_and_open_wants_none(tmp_path) -> None:
    async with store_app(tmp_path / "k.duckdb", api_settings(**{"metrics.access": "key"})) as srv:
        assert (await srv.http.get("/metrics")).status_code == 401
        assert (await srv.http.get("/metrics", headers=srv.auth("read", header="x-api-key"))).status_code == 200
    async with running_app(api_settings(**{"metrics.access": "open"})) as srv:
        assert (await srv.http.get("/metrics", headers={"X-Forwarded-For": "198.51.100.1"})).status_code == 200


async def test_metrics_off_means_no_route() -> None:
    async with running_app(api_settings(**{"metrics.enabled": False})) as srv:
        assert (await srv.http.get("/metrics")).status_code == 404
        paths = (await srv.http.get("/v1/openapi.json")).json()["paths"]
    assert "/metrics" not in paths


async def test_server_health_counts_ingest_duplicates_requests_and_refusals(tmp_path) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    batch = [{"timestamp": now, "gpu_index": i, "gpu_uuid": f"GPU-m-{i}", "power_draw_w": 100,
              "utilization_gpu_pct": 50, "utilization_memory_pct": 20, "temperature_c": 60,
              "memory_used_mb": 1000} for i in range(3)]
    async with store_app(tmp_path / "h.duckdb") as srv:
        ingest = srv.auth("ingest")
        assert (await srv.http.post("/v1/metrics/ingest", json=batch, headers=ingest)).status_code == 200
        assert (await srv.http.post("/v1/metrics/ingest", json=batch, headers=ingest)).status_code == 200
        assert (await srv.http.post("/v1/metrics/ingest", json=batch)).status_code == 401
        assert (await srv.http.get("/v1/gpu/status", headers=srv.auth("read"))).status_code == 403
        assert (await srv.http.request("BREW", "/v1/gpu/status")).status_code == 405
        families = families_by_name((await srv.http.get("/metrics")).text)
        paths = (await srv.http.get("/v1/openapi.json")).json()["paths"]
    samples = {s.labels["result"]: s.value for s in families["gpufleet_store_samples"].samples}
    assert samples == {"inserted": 3, "duplicate": 3}
    requests = {(s.labels["route"], s.labels["method"], s.labels["code"]): s.value
                for s in families["gpufleet_http_requests"].samples}
    assert requests[("/v1/metrics/ingest", "POST", "200")] == 2
    assert requests[("unmatched", "other", "405")] == 1  # no series per invented method
    auth = {(s.labels["route"], s.labels["code"]): s.value
            for s in families["gpufleet_http_auth_failures"].samples}
    assert auth == {("/v1/metrics/ingest", "401"): 1, ("/v1/gpu/status", "403"): 1}
    latency = families["gpufleet_http_request_duration_seconds"]
    counts = [s for s in latency.samples if s.name.endswith("_count")
              and s.labels["route"] == "/v1/metrics/ingest"]
    assert counts[0].value == 3
    for name in ("gpufleet_store_writer_queue_depth", "gpufleet_store_rollup_pending_samples",
                 "gpufleet_store_rollup_lag_seconds"):
        assert families[name].samples[0].value >= 0
    operation = paths["/metrics"]["get"]
    assert "text/plain; version=0.0.4" in operation["responses"]["200"]["content"]


async def test_rate_limited_requests_are_counted(tmp_path) -> None:
    settings = api_settings(**{"rate_limits.hosts.requests": 1})
    async with store_app(tmp_path / "r.duckdb", settings) as srv:
        read = srv.auth("read")
        assert (await srv.http.get("/v1/agent/hosts", headers=read)).status_code == 200
        assert (await srv.http.get("/v1/agent/hosts", headers=read)).status_code == 429
        families = families_by_name((await srv.http.get("/metrics")).text)
    limited = families["gpufleet_http_rate_limited"].samples
    assert [(s.labels["route"], s.value) for s in limited] == [("/v1/agent/hosts", 1)]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
async def test_promtool_finds_nothing_to_fix(tmp_path) -> None:
    async with store_app(tmp_path / "p.duckdb") as srv:
        await srv.http.get("/v1/gpu/status", headers=srv.auth("operator"))
        text = (await srv.http.get("/metrics")).text
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                            text=True, timeout=30)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                # dcgm-exporter's own names are not snake_case with unit suffixes: kept on purpose
                if line.strip() and not line.startswith("DCGM_FI_")]
    assert result.returncode in (0, 3) and problems == [], result.stdout + result.stderr


async def test_health_fields_map_to_dcgm_series(fixed_clock) -> None:
    hot = SimulatedBackend("inf-l40s-01", clock=fixed_clock)
    worn = SimulatedBackend("dgx-a100-01", clock=fixed_clock)
    async with running_app(backend=hot) as srv:
        hot_families = families_by_name((await srv.http.get("/metrics")).text)
    async with running_app(backend=worn) as srv:
        worn_families = families_by_name((await srv.http.get("/metrics")).text)

    def by_gpu(families: dict, name: str) -> dict[int, float]:
        return {int(s.labels["gpu"]): s.value for s in families[name].samples}

    # NVML's bits: sw_thermal_slowdown 0x20, gpu_idle 0x1
    assert by_gpu(hot_families, "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS")[2] == 0x20
    assert by_gpu(worn_families, "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS")[6] == 0x1
    assert by_gpu(worn_families, "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS")[0] == 0
    assert worn_families["DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"].type == "counter"
    assert by_gpu(worn_families, "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL")[5] == 37
    assert by_gpu(worn_families, "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL")[5] == 1
    assert by_gpu(worn_families, "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL")[5] == 1843
    assert by_gpu(worn_families, "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL")[5] == 2
    assert by_gpu(worn_families, "DCGM_FI_DEV_XID_ERRORS") == {
        i: (63 if i == 5 else 0) for i in by_gpu(worn_families, "DCGM_FI_DEV_XID_ERRORS")}
    assert by_gpu(worn_families, "gpufleet_gpu_xid_errors")[5] == 2
    assert by_gpu(worn_families, "DCGM_FI_DEV_ROW_REMAP_PENDING")[5] == 1
    assert by_gpu(worn_families, "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS")[5] == 1
    expected = {g.index: g.pcie.link_gen for g in worn.snapshot().gpus if g.pcie and g.pcie.link_gen}
    assert by_gpu(worn_families, "DCGM_FI_DEV_PCIE_LINK_GEN") == expected


async def test_serve_without_a_gpu_and_without_simulate_exports_no_made_up_readings(tmp_path) -> None:
    async with store_app(tmp_path / "w.duckdb") as srv:  # a store, a simulated backend, no --simulate
        families = families_by_name((await srv.http.get("/metrics")).text)
        assert srv.app._feed_task is None  # nothing reads the GPUs for it either
    assert not [name for name in families if name.startswith("DCGM_")]
    assert "gpufleet_gpu_attribution_info" not in families
    assert families["gpufleet_gpu_series_withheld"].samples[0].value == 1
    assert families["gpufleet_gpu_backend_up"].samples[0].value == 0
    async with store_app(tmp_path / "s.duckdb", api_settings(**{"server.simulate": True})) as srv:
        asked = families_by_name((await srv.http.get("/metrics")).text)
    assert "DCGM_FI_DEV_GPU_UTIL" in asked and "gpufleet_gpu_series_withheld" not in asked


async def test_the_feed_starts_at_the_first_scrape_then_reads_every_refresh_s() -> None:
    import asyncio

    backend = CountingBackend(SimulatedBackend())
    async with running_app(api_settings(**{"metrics.refresh_s": 0.1}), backend=backend) as srv:
        await srv.http.get("/v1/openapi.json")
        assert backend.reads == 0 and srv.app._feed_task is None  # nobody scraped yet
        assert (await srv.http.get("/metrics")).status_code == 200
        for _ in range(200):  # awaits the reads, bounded: 20 s at most
            if backend.reads >= 3:
                break
            await asyncio.sleep(0.1)
        assert backend.reads >= 3
        assert srv.app.feed.age_s() is not None and srv.app.feed.age_s() < 60
